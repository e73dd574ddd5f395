//! A Kafka-compatible broker (tansu) for one test: started on a free port with in-memory
//! storage, killed when dropped. tansu must be installed (`cargo install --locked tansu
//! --version 0.6.0 --features dynostore`; `.ci/run` does it); without it the test fails
//! and says how to install it.

use std::time::Duration;

#[derive(Debug)]
pub struct Tansu {
    child: std::process::Child,
    bootstrap: String,
}

impl Tansu {
    pub fn start() -> Self {
        let binary = std::env::var("EDDYTEST_TANSU").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            let installed = format!("{home}/.cargo/bin/tansu");
            if std::path::Path::new(&installed).exists() {
                installed
            } else {
                "tansu".to_owned()
            }
        });
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap_or_else(|e| panic!("no free port: {e}"));
        let url = format!("tcp://127.0.0.1:{port}");
        let child = std::process::Command::new(&binary)
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url, "--storage-engine", "memory://tansu/"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "tansu is required for this test and could not be started from {binary:?} ({e}). \
                     Install it: cargo install --locked tansu --version 0.6.0 --features dynostore"
                )
            });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "tansu did not listen on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            child,
            bootstrap: format!("127.0.0.1:{port}"),
        }
    }

    /// `host:port` for `bootstrap.servers`.
    pub fn bootstrap(&self) -> &str {
        &self.bootstrap
    }
}

impl Drop for Tansu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
