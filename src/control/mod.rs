//! The running mount's face to the outside: the control socket (`spackfs status`), the
//! Prometheus endpoint, the status both report, and the lifecycle told to systemd
//! (sd_notify) or to a waiting mount helper. It reads the catalog, the store and the
//! metrics; it changes nothing.

pub mod lifecycle;
pub mod metrics;
pub mod socket;
pub mod status;

pub use self::status::Status;
