//! Backups of the running server as an operator sees them: what a backup carries besides the
//! store (the PKI and the configuration), and scheduled snapshots kept in rotation
//! (`[backup]`). The file format, consistency and restore are `store::backup`'s.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::services::Services;
use crate::store::ports::{BackupError, Extra, Manifest};

/// Names of scheduled snapshots: `corral-<UTC time>.backup.tar`, so names sort by time.
const PREFIX: &str = "corral-";
const SUFFIX: &str = ".backup.tar";

/// Writes an online backup of the running server to `out` (see `store::backup`).
pub async fn write(
    s: &Services,
    extras: Vec<Extra>,
    out: impl std::io::Write + Send + 'static,
) -> Result<Manifest, BackupError> {
    s.backup.backup(extras, Box::new(out)).await
}

/// The files besides the store a backup carries: the PKI, the running configuration (secrets
/// masked) and the package files (streamed, not read here), so a restored server serves the
/// packages its records name.
pub fn extras(s: &Services) -> std::io::Result<Vec<Extra>> {
    let mut extras = crate::store::ports::data_dir_files(&s.config.data_dir)?;
    extras.push(Extra::Bytes(
        "corral.toml".into(),
        s.config.to_masked_toml().into_bytes(),
    ));
    extras.push(Extra::Dir(
        crate::ota::packages::FILES_DIR.into(),
        s.config.data_dir.join(crate::ota::packages::FILES_DIR),
    ));
    Ok(extras)
}

/// The bytes of the regular files directly in `dir`.
fn dir_size(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

/// Scheduled snapshots in `dir`, oldest first.
fn snapshots(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .map(|n| n.to_string_lossy())
                .is_some_and(|n| n.starts_with(PREFIX) && n.ends_with(SUFFIX))
        })
        .collect();
    out.sort();
    out
}

/// Takes one snapshot into `dir` and deletes the oldest beyond `keep`. Skipped (an error
/// saying why) when the disk could not hold it and keep the store's reserve.
pub async fn snapshot(s: &Services, dir: &Path, keep: usize) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir)?;
    // What an interrupted snapshot left.
    for e in std::fs::read_dir(dir)?.flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name.starts_with(PREFIX) && name.ends_with(".partial") {
            let _ = std::fs::remove_file(e.path());
        }
    }
    let packages = dir_size(&s.config.data_dir.join(crate::ota::packages::FILES_DIR));
    let need = s.backup.size_on_disk().await? + packages + (s.config.store.min_free_mb << 20);
    let free = crate::store::ports::free_bytes(dir)?;
    if free < need {
        anyhow::bail!(
            "not enough free space in {} for a snapshot ({} MiB free; the store takes {} MiB \
             and store.min_free_mb must stay free)",
            dir.display(),
            free >> 20,
            (need >> 20) - s.config.store.min_free_mb
        );
    }
    let stamp = jiff::Timestamp::now()
        .strftime("%Y%m%dT%H%M%SZ")
        .to_string();
    let path = dir.join(format!("{PREFIX}{stamp}{SUFFIX}"));
    let partial = path.with_extension("partial");
    let file = std::fs::File::create(&partial)?;
    let res = s
        .backup
        .backup(
            extras(s)?,
            Box::new(std::io::BufWriter::new(file.try_clone()?)),
        )
        .await;
    if let Err(e) = res {
        let _ = std::fs::remove_file(&partial);
        return Err(e.into());
    }
    file.sync_all()?;
    std::fs::rename(&partial, &path)?;
    let all = snapshots(dir);
    for old in all.iter().take(all.len().saturating_sub(keep)) {
        if let Err(e) = std::fs::remove_file(old) {
            tracing::warn!(file = %old.display(), error = %e, "cannot remove an old snapshot");
        }
    }
    Ok(path)
}

/// Runs scheduled snapshots until `stop`. The first comes one interval after the newest
/// snapshot already there (a minute after the start at the earliest), so restarts do not
/// multiply them.
pub async fn schedule(
    s: Arc<Services>,
    mut stop: watch::Receiver<bool>,
    report: crate::workers::Report,
) {
    let cfg = s.config.backup.clone();
    if cfg.interval_hours == 0 {
        return;
    }
    let dir = cfg.dir(&s.config.data_dir);
    let every = Duration::from_secs(cfg.interval_hours * 3600);
    let since_last = snapshots(&dir)
        .last()
        .and_then(|p| std::fs::metadata(p).ok())
        .and_then(|m| m.modified().ok())
        .and_then(|t| t.elapsed().ok());
    let mut wait = match since_last {
        Some(age) => every.saturating_sub(age).max(Duration::from_secs(60)),
        None => every,
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return,
        }
        // A stop does not wait for a snapshot: the partial file is removed by the next one.
        let run = report.run(|| async {
            match snapshot(&s, &dir, cfg.keep).await {
                Ok(p) => {
                    tracing::info!(file = %p.display(), "scheduled snapshot written");
                    Ok(())
                }
                Err(e) => Err(format!("scheduled snapshot skipped: {e:#}")),
            }
        });
        tokio::select! {
            _ = run => {}
            _ = stop.changed() => return,
        }
        wait = every;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_scheduled_snapshots_count_in_rotation() {
        let dir = tempfile::tempdir().expect("tempdir");
        for n in [
            "corral-20261201T000000Z.backup.tar",
            "corral-20261130T000000Z.backup.tar",
            "pre-migration-v3-to-v4-20261101T000000Z.backup.tar",
            "corral-20261202T000000Z.partial",
        ] {
            std::fs::write(dir.path().join(n), b"").expect("write");
        }
        let names: Vec<_> = snapshots(dir.path())
            .iter()
            .map(|p| p.file_name().expect("name").to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            [
                "corral-20261130T000000Z.backup.tar",
                "corral-20261201T000000Z.backup.tar"
            ]
        );
    }
}
