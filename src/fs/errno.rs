//! The errno a process gets: the file system is the only layer that speaks errno; the
//! layers below say what went wrong in their own terms.

use fuser::Errno;

use crate::catalog::live::FailureKind;

/// What errno an error is for a process.
pub trait ToErrno {
    fn errno(&self) -> Errno;
}

impl ToErrno for std::io::Error {
    fn errno(&self) -> Errno {
        Errno::from_i32(self.raw_os_error().unwrap_or(libc::EIO))
    }
}

impl ToErrno for FailureKind {
    /// ENOENT (no mirror has it), EACCES (no mirror's copy is trusted), ENOSPC (the cache
    /// is full), else EIO.
    fn errno(&self) -> Errno {
        match self {
            FailureKind::NotFound => Errno::ENOENT,
            FailureKind::Untrusted => Errno::EACCES,
            FailureKind::NoSpace => Errno::ENOSPC,
            FailureKind::Failed => Errno::EIO,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_and_io_errors_map_to_their_errno() {
        assert_eq!(FailureKind::NoSpace.errno(), Errno::ENOSPC);
        assert_eq!(FailureKind::Untrusted.errno(), Errno::EACCES);
        assert_eq!(FailureKind::NotFound.errno(), Errno::ENOENT);
        assert_eq!(FailureKind::Failed.errno(), Errno::EIO);
        let e = std::io::Error::from_raw_os_error(libc::ENOSPC);
        assert_eq!(e.errno(), Errno::ENOSPC);
        assert_eq!(std::io::Error::other("x").errno(), Errno::EIO);
    }
}
