//! A thread for bulk background work (the migration copy) at the lowest CPU priority.
//!
//! On a host whose cores are busy, the copy then takes only the CPU that client traffic leaves
//! idle: its thread issues the copy's commands to Redis, so a starved copy thread also keeps
//! Redis from doing copy work while clients wait. When the host is idle the copy runs at full
//! speed. The thread's nice value is the proxy setting `migration_copy_nice` (0 = same
//! priority as client traffic).

use std::future::Future;
use std::sync::OnceLock;
use tokio::runtime::Handle;
use tracing::warn;

static RUNTIME: OnceLock<Option<Handle>> = OnceLock::new();

/// Lowers the calling thread's priority (Linux: a thread's nice value is per thread).
fn set_thread_nice(nice: i32) -> Result<(), std::io::Error> {
    if nice == 0 {
        return Ok(());
    }
    // SAFETY: gettid has no preconditions.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::id_t;
    // SAFETY: setpriority only reads its integer arguments.
    let r = unsafe { libc::setpriority(libc::PRIO_PROCESS, tid, nice) };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn start(nice: i32) -> Option<Handle> {
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            warn!("cannot start the background runtime ({e}): bulk work runs with client traffic");
            return None;
        }
    };
    let handle = runtime.handle().clone();
    let spawned = std::thread::Builder::new().name("proxy-background".into()).spawn(move || {
        if let Err(e) = set_thread_nice(nice) {
            warn!("cannot lower the background thread's priority to nice {nice}: {e}");
        }
        runtime.block_on(std::future::pending::<()>());
    });
    match spawned {
        Ok(_) => Some(handle),
        Err(e) => {
            warn!("cannot start the background thread ({e}): bulk work runs with client traffic");
            None
        }
    }
}

/// Runs `work` on the background thread (started on first use with `nice`; later calls keep
/// the first value) and waits for its result. Falls back to the caller's runtime if the thread
/// cannot be started.
pub async fn run<F>(nice: i32, work: F) -> F::Output
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    if nice == 0 {
        return work.await;
    }
    match RUNTIME.get_or_init(|| start(nice)) {
        Some(handle) => match handle.spawn(work).await {
            Ok(out) => out,
            // The work panicked: report it like a panic of the caller's own task.
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        },
        None => work.await,
    }
}
