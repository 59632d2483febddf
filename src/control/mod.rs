//! The running mount's face to the outside: the control socket (`spackfs status`), the
//! Prometheus endpoint, and the status both report. It reads the catalog, the store and
//! the metrics; it changes nothing.

pub mod metrics;
pub mod socket;
pub mod status;

pub use self::status::Status;
