//! `corral backup FILE` (an online backup of a running server, over the REST API),
//! `corral backup verify FILE` and `corral restore FILE DIR` (local, on the file).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Subcommand};

use super::ClientArgs;
use super::client::ApiClient;
use crate::store::backup::{self, Manifest};

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true)]
pub struct BackupArgs {
    #[command(subcommand)]
    cmd: Option<BackupCmd>,
    /// File to write the backup to (it is checked before it gets this name).
    file: Option<PathBuf>,
    #[command(flatten)]
    client: ClientArgs,
}

#[derive(Subcommand)]
enum BackupCmd {
    /// Restore a backup into a temporary directory and check it: every checksum, every record
    /// count, and that the restored store opens.
    Verify {
        /// The backup file.
        file: PathBuf,
    },
}

#[derive(Args)]
pub struct RestoreArgs {
    /// The backup file.
    file: PathBuf,
    /// The new data directory (must not exist, or be empty). Start Corral on it with
    /// `data_dir = DIR` (or CORRAL_DATA_DIR=DIR).
    dir: PathBuf,
}

fn summary(m: &Manifest) -> String {
    format!(
        "{} devices, {} trees, {} log segments, {} files; schema {}, copied in {} ms",
        m.records("devices"),
        m.trees.len(),
        m.wal.len(),
        m.files.len(),
        m.schema_version,
        m.finished_at - m.started_at
    )
}

pub async fn run(a: BackupArgs) -> anyhow::Result<ExitCode> {
    match (a.cmd, a.file) {
        (Some(BackupCmd::Verify { file }), _) => verify(&file).await,
        (None, Some(file)) => take(&a.client, &file).await,
        (None, None) => anyhow::bail!("name the file to write: corral backup FILE"),
    }
}

async fn take(client: &ClientArgs, file: &Path) -> anyhow::Result<ExitCode> {
    let c = ApiClient::from_args(client)?;
    let partial = file.with_extension("partial");
    let n = {
        let f = std::fs::File::create(&partial)
            .with_context(|| format!("cannot write {}", partial.display()))?;
        let mut w = std::io::BufWriter::new(f);
        let res = c.download("/backup", &[], &mut w).await;
        if res.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        let n = res.context("the backup did not finish")?;
        w.into_inner()
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .sync_all()?;
        n
    };
    let p = partial.clone();
    let report = tokio::task::spawn_blocking(move || backup::check(&p)).await?;
    match report {
        Ok(r) => {
            std::fs::rename(&partial, file)?;
            eprintln!(
                "wrote {} ({n} bytes): {}",
                file.display(),
                summary(&r.manifest)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            let _ = std::fs::remove_file(&partial);
            Err(anyhow::anyhow!(
                "the backup received does not check out: {e}"
            ))
        }
    }
}

async fn verify(file: &Path) -> anyhow::Result<ExitCode> {
    match backup::verify(file).await {
        Ok(r) => {
            println!(
                "{}: a good backup. Restored and opened: {} devices. {}",
                file.display(),
                r.devices.unwrap_or_default(),
                summary(&r.manifest)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            Ok(ExitCode::FAILURE)
        }
    }
}

pub async fn restore(a: RestoreArgs) -> anyhow::Result<ExitCode> {
    let r = backup::restore(&a.file, &a.dir)
        .await
        .map_err(|e| anyhow::anyhow!("{}: {e}", a.file.display()))?;
    println!(
        "restored into {}: {}\nstart it with: CORRAL_DATA_DIR={} corral serve",
        a.dir.display(),
        summary(&r.manifest),
        a.dir.display()
    );
    Ok(ExitCode::SUCCESS)
}
