//! A database of its own for each test, on the server `DATABASE_URL` names
//! (`scripts/local-postgres start DIR` prints one); without it the tests
//! print one line and skip.

#![allow(dead_code, unreachable_pub)]

/// A fresh database, dropped (with its connections) when this is dropped.
pub struct TestDatabase {
    admin: String,
    name: String,
    /// The URL of the fresh database.
    pub url: String,
}

impl TestDatabase {
    /// A new empty database, or `None` (after a line saying why) when
    /// `DATABASE_URL` is not set.
    pub fn create(test: &str) -> Option<Self> {
        let Ok(admin) = std::env::var("DATABASE_URL") else {
            println!(
                "skipped {test}: DATABASE_URL is not set (start a server with \
                 `scripts/local-postgres start DIR` and export the URL it prints)"
            );
            return None;
        };
        let mut suffix = [0u8; 6];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut suffix);
        let name = format!("kith_test_{}", hex::encode(suffix));
        off_runtime(|| {
            let mut client = postgres::Client::connect(&admin, postgres::NoTls)
                .unwrap_or_else(|e| panic!("connect to DATABASE_URL {admin}: {e}"));
            client
                .batch_execute(&format!("CREATE DATABASE {name}"))
                .expect("create a test database");
        });
        let url = match admin.rsplit_once('/') {
            Some((server, _)) if server.contains("://") && server.matches('/').count() >= 2 => {
                format!("{server}/{name}")
            }
            _ => panic!("DATABASE_URL {admin:?} does not end in /DBNAME"),
        };
        Some(Self { admin, name, url })
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        off_runtime(|| {
            if let Ok(mut client) = postgres::Client::connect(&self.admin, postgres::NoTls) {
                let _ = client.batch_execute(&format!(
                    "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                    self.name
                ));
            }
        });
    }
}

/// Run `f` on a thread of its own: the synchronous PostgreSQL client runs
/// a runtime of its own, which cannot start inside an async test's.
fn off_runtime(f: impl FnOnce() + Send) {
    std::thread::scope(|scope| {
        scope.spawn(f).join().expect("the database helper thread");
    });
}
