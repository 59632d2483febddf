//! The ELF step of relocation (format doc 7.4): rewrite the `DT_RPATH`/`DT_RUNPATH` string
//! and the `PT_INTERP` interpreter in place, following Spack's own ELF reader rule for rule
//! (files it cannot parse, or that are neither executables nor shared objects, are skipped).

use super::map::RelocationMap;

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NULL: i64 = 0;
const DT_STRTAB: i64 = 5;
const DT_RPATH: i64 = 15;
const DT_RUNPATH: i64 = 29;
const SHT_STRTAB: u32 = 3;

/// A C string to rewrite: where it is and its old and new value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CStringEdit {
    pub offset: usize,
    pub old: Vec<u8>,
    pub new: Vec<u8>,
}

/// The edits the ELF step wants for one file.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ElfEdits {
    pub rpath: Option<CStringEdit>,
    pub interp: Option<CStringEdit>,
}

impl ElfEdits {
    /// Do all edits fit in place?
    pub fn fits(&self) -> bool {
        [&self.rpath, &self.interp]
            .into_iter()
            .flatten()
            .all(|e| e.new.len() <= e.old.len())
    }

    /// Write the edits, NUL-filling the rest of each old string.
    pub fn apply(&self, data: &mut [u8]) {
        for e in [&self.rpath, &self.interp].into_iter().flatten() {
            data[e.offset..e.offset + e.new.len()].copy_from_slice(&e.new);
            data[e.offset + e.new.len()..e.offset + e.old.len()].fill(0);
        }
    }
}

struct Reader<'a> {
    data: &'a [u8],
    le: bool,
    is64: bool,
}

impl Reader<'_> {
    fn bytes<const N: usize>(&self, off: usize) -> Option<[u8; N]> {
        self.data.get(off..off.checked_add(N)?)?.try_into().ok()
    }
    fn u16(&self, off: usize) -> Option<u64> {
        let b = self.bytes::<2>(off)?;
        Some(if self.le {
            u16::from_le_bytes(b)
        } else {
            u16::from_be_bytes(b)
        } as u64)
    }
    fn u32(&self, off: usize) -> Option<u64> {
        let b = self.bytes::<4>(off)?;
        Some(if self.le {
            u32::from_le_bytes(b)
        } else {
            u32::from_be_bytes(b)
        } as u64)
    }
    fn u64(&self, off: usize) -> Option<u64> {
        let b = self.bytes::<8>(off)?;
        Some(if self.le {
            u64::from_le_bytes(b)
        } else {
            u64::from_be_bytes(b)
        })
    }
    /// A word: 8 bytes in ELF64, 4 in ELF32.
    fn word(&self, off: usize) -> Option<u64> {
        if self.is64 {
            self.u64(off)
        } else {
            self.u32(off)
        }
    }
    fn sword(&self, off: usize) -> Option<i64> {
        if self.is64 {
            self.u64(off).map(|v| v as i64)
        } else {
            self.u32(off).map(|v| v as u32 as i32 as i64)
        }
    }
    fn cstr(&self, off: usize, end: usize) -> Option<&[u8]> {
        let slice = self.data.get(off..end.min(self.data.len()))?;
        let nul = memchr::memchr(0, slice)?;
        Some(&slice[..nul])
    }
}

/// Where the rpath and interpreter strings are (`None`: skip the file, as Spack does).
struct Strings {
    rpath: Option<(usize, Vec<u8>)>,
    interp: Option<(usize, Vec<u8>)>,
}

fn parse(data: &[u8]) -> Option<Strings> {
    if data.len() < 16 || &data[..4] != b"\x7fELF" {
        return None;
    }
    let is64 = match data[4] {
        1 => false,
        2 => true,
        _ => return None,
    };
    let le = match data[5] {
        1 => true,
        2 => false,
        _ => return None,
    };
    let r = Reader { data, le, is64 };
    let e_type = r.u16(16)?;
    if e_type != 2 && e_type != 3 {
        return None;
    }
    let (phoff, shoff, phnum, shnum) = if is64 {
        (r.u64(32)?, r.u64(40)?, r.u16(56)?, r.u16(60)?)
    } else {
        (r.u32(28)?, r.u32(32)?, r.u16(44)?, r.u16(48)?)
    };
    let ph_size = if is64 { 56 } else { 32 };
    let mut loads: Vec<(u64, u64)> = Vec::new();
    let mut interp_ph = None;
    let mut dynamic_ph = None;
    for i in 0..phnum as usize {
        let base = (phoff as usize).checked_add(i * ph_size)?;
        let p_type = r.u32(base)? as u32;
        let (offset, vaddr, filesz) = if is64 {
            (r.u64(base + 8)?, r.u64(base + 16)?, r.u64(base + 32)?)
        } else {
            (r.u32(base + 4)?, r.u32(base + 8)?, r.u32(base + 16)?)
        };
        if filesz == 0 {
            continue;
        }
        match p_type {
            PT_LOAD => loads.push((offset, vaddr)),
            PT_INTERP => interp_ph = Some((offset, filesz)),
            PT_DYNAMIC => dynamic_ph = Some((offset, filesz)),
            _ => {}
        }
    }
    loads.sort_by_key(|l| l.1);
    let interp = match interp_ph {
        Some((off, size)) => {
            let off = off as usize;
            Some((off, r.cstr(off, off.checked_add(size as usize)?)?.to_vec()))
        }
        None => None,
    };
    let mut rpath = None;
    if let (Some((dyn_off, dyn_size)), false) = (dynamic_ph, loads.is_empty()) {
        let ent = if is64 { 16 } else { 8 };
        let (mut n_rpath, mut n_strtab) = (0, 0);
        let (mut rpath_val, mut strtab_vaddr) = (0u64, 0u64);
        for i in 0..(dyn_size as usize / ent) {
            let base = (dyn_off as usize).checked_add(i * ent)?;
            let tag = r.sword(base)?;
            let val = r.word(base + ent / 2)?;
            match tag {
                DT_NULL => break,
                DT_RPATH | DT_RUNPATH => {
                    n_rpath += 1;
                    rpath_val = val;
                }
                DT_STRTAB => {
                    n_strtab += 1;
                    strtab_vaddr = val;
                }
                _ => {}
            }
        }
        if n_rpath > 1 || n_strtab != 1 {
            return None;
        }
        if n_rpath == 1 {
            // The PT_LOAD with the largest vaddr <= the string table's vaddr.
            let idx = loads.partition_point(|l| l.1 <= strtab_vaddr);
            let (p_off, p_vaddr) = *loads.get(idx.checked_sub(1)?)?;
            let strtab_off = p_off.wrapping_sub(p_vaddr).wrapping_add(strtab_vaddr);
            // Its size comes from the SHT_STRTAB section at that offset.
            let sh_size = if is64 { 64 } else { 40 };
            let size = (0..shnum as usize).find_map(|i| {
                let base = (shoff as usize).checked_add(i * sh_size)?;
                let sh_type = r.u32(base + 4)? as u32;
                let (off, size) = if is64 {
                    (r.u64(base + 24)?, r.u64(base + 32)?)
                } else {
                    (r.u32(base + 16)?, r.u32(base + 20)?)
                };
                (sh_type == SHT_STRTAB && off == strtab_off).then_some(size)
            })?;
            let strtab_end = (strtab_off as usize).checked_add(size as usize)?;
            if strtab_end > data.len() {
                return None;
            }
            let off = (strtab_off as usize).checked_add(rpath_val as usize)?;
            rpath = Some((off, r.cstr(off, strtab_end)?.to_vec()));
        }
    }
    Some(Strings { rpath, interp })
}

/// The first key of `map` that is a prefix of `s`, and the substituted string.
pub fn substitute_prefix(s: &[u8], map: &RelocationMap) -> Option<Vec<u8>> {
    map.pairs()
        .iter()
        .find(|(old, _)| s.starts_with(old))
        .map(|(old, new)| {
            let mut out = new.clone();
            out.extend_from_slice(&s[old.len()..]);
            out
        })
}

/// Compute the edits of the ELF step for a file's bytes.
pub fn elf_edits(data: &[u8], map: &RelocationMap) -> ElfEdits {
    let Some(strings) = parse(data) else {
        return ElfEdits::default();
    };
    let mut edits = ElfEdits::default();
    if let Some((offset, old)) = strings.rpath {
        let mut entries: Vec<Vec<u8>> = old
            .split(|&b| b == b':')
            .filter(|e| !e.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        let mut changed = false;
        for e in entries.iter_mut() {
            if let Some(new) = substitute_prefix(e, map) {
                *e = new;
                changed = true;
            }
        }
        if changed {
            edits.rpath = Some(CStringEdit {
                offset,
                old,
                new: entries.join(&b':'),
            });
        }
    }
    if let Some((offset, old)) = strings.interp {
        if let Some(new) = substitute_prefix(&old, map) {
            edits.interp = Some(CStringEdit { offset, old, new });
        }
    }
    edits
}

/// The rpath of an ELF file, if it has one Spack would read.
pub fn rpath(data: &[u8]) -> Option<Vec<u8>> {
    parse(data)?.rpath.map(|(_, s)| s)
}
