//! `spackfs demo`: builds an example mirror, installs from it and runs the relocated binary.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;

pub async fn run(_workdir: Option<PathBuf>) -> Result<ExitCode> {
    anyhow::bail!("demo: not yet built")
}
