//! Opening a sled database that this process closed a moment ago.
//!
//! sled releases its file lock only when its IO threads drop their last
//! handle, shortly after the `Db` itself is dropped. A process that closes
//! and reopens a store (an application restarting its engine, the tests)
//! can therefore find its own lock still held for a few milliseconds. The
//! open is retried while that is the failure, for a bounded time; another
//! process holding the database still gets the error, a little later.

use std::time::{Duration, Instant};

/// How long an open waits for a lock this process is about to release.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Open `config`'s database, waiting up to [`LOCK_WAIT`] for its lock.
pub(crate) fn open_db(config: &sled::Config) -> sled::Result<sled::Db> {
    let start = Instant::now();
    loop {
        match config.open() {
            // sled reports the lock only in the message of an `Other` IO
            // error (config.rs), so the message is what can be matched.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && start.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(10));
            }
            result => return result,
        }
    }
}
