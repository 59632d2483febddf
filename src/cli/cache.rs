//! `spackfs cache ls|gc|verify`: inspect and manage the prefix cache, mounted or not.

use std::process::ExitCode;

use anyhow::Result;

use super::CacheCommand;

pub(crate) fn run(command: CacheCommand, dir: &std::path::Path) -> Result<ExitCode> {
    let store = spackfs::store::Store::open(dir, None)?;
    let human = |b: u64| bytesize::ByteSize::b(b).to_string();
    match command {
        CacheCommand::Ls => {
            let now = std::time::SystemTime::now();
            for l in store.list() {
                let ago = now.duration_since(l.last_use).unwrap_or_default().as_secs();
                println!(
                    "{}  {}  {}  last use {}s ago  {}  root {}",
                    l.meta.key,
                    l.meta.package,
                    human(l.meta.size),
                    ago,
                    if l.pinned { "pinned" } else { "unpinned" },
                    l.meta.root
                );
            }
            println!("total {}", human(store.total_size()));
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Gc { to } => {
            let target = match to {
                Some(t) => spackfs::store::parse_size(&t, dir).map_err(anyhow::Error::msg)?,
                None => 0,
            };
            let evicted = store.gc(target)?;
            for m in &evicted {
                println!("evicted {}  {}  {}", m.key, m.package, human(m.size));
            }
            println!(
                "evicted {} prefix(es); the cache now holds {}",
                evicted.len(),
                human(store.total_size())
            );
            Ok(ExitCode::SUCCESS)
        }
        CacheCommand::Verify { quick } => {
            let bad = store.verify(!quick)?;
            for (m, why) in &bad {
                println!("damaged {}  {}: {why} (removed)", m.key, m.package);
            }
            println!(
                "{} prefix(es) checked, {} damaged",
                store.list().len() + bad.len(),
                bad.len()
            );
            Ok(if bad.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}
