//! `herald-bench`: load generator for Herald and comparable push servers.
//!
//! Layout:
//! - `cli`: arguments, validation, limits;
//! - `template`: URL/body templates and the loopback-only rule;
//! - `payload`: the `{"seq":N,"t":NS}` mark and its tolerant scan;
//! - `tally`: sequence tracking (lost/dup/out-of-order) and latency HDR histogram;
//! - `net`, `http`: source-address-spread TCP and a small HTTP/1.1 client
//!   (in the library, `src/lib.rs`, shared with Herald's integration tests);
//! - `subscriber`: one subscriber per transport (ws, session-ws, sse, long-poll);
//! - `worker`: a share of the subscribers, in-process or as a child process;
//! - `publisher`: rate-paced or flat-out publishing over keep-alive lanes;
//! - `server_stat`: the server's RSS and CPU from /proc;
//! - `run`: the phases of a run; `report`: derived figures, JSON and table.

mod cli;
mod payload;
mod publisher;
mod pusher;
mod report;
mod run;
mod server_stat;
mod subscriber;
mod tally;
mod template;
mod worker;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{bail, Context};
use clap::Parser;
use herald_bench::{http, net};

use cli::{Args, Config, Output, FD_RESERVE};

fn main() -> ExitCode {
    let args = Args::parse();
    match real_main(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("herald-bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn real_main(args: Args) -> anyhow::Result<()> {
    let cfg = Arc::new(Config::from_args(args)?);
    let (index, procs) = cfg.worker.unwrap_or((0, cfg.args.procs));
    check_fds(&cfg, index, procs)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    if cfg.worker.is_some() {
        return rt.block_on(worker::run_child(cfg, index, procs));
    }
    let report = rt.block_on(run::run(cfg.clone()))?;
    let json = serde_json::to_string(&report)?;
    match cfg.args.output {
        Output::Json => println!("{json}"),
        Output::Table => print!("{}", report.table()),
        Output::Both => {
            print!("{}", report.table());
            println!("{json}");
        }
    }
    Ok(())
}

/// Raises the soft open-file limit to the hard one and checks that this
/// process's share of subscribers fits.
fn check_fds(cfg: &Config, index: u32, procs: u32) -> anyhow::Result<()> {
    let limit = rlimit::increase_nofile_limit(u64::MAX).context("raising RLIMIT_NOFILE")?;
    let share = if cfg.worker.is_some() || procs == 1 {
        cfg.share(index, procs)
    } else {
        0
    };
    let need = share + u64::from(cfg.args.pub_concurrency) + FD_RESERVE;
    if need > limit {
        let per_proc = limit
            .saturating_sub(FD_RESERVE + u64::from(cfg.args.pub_concurrency))
            .max(1);
        let procs_needed = cfg.args.connections.div_ceil(per_proc);
        bail!(
            "{share} subscribers need about {need} open files but this process may hold {limit}; \
             use --procs {procs_needed} (or more)"
        );
    }
    Ok(())
}
