//! A `nats-server` of a test's own, on a free loopback port with a temporary
//! store directory, that the test may kill, restart, pause and resume (the
//! shared server of `EDA_TEST_NATS_URL` stays untouched).

/// The NATS client `NatsBus` is built on, for hand-written comparison loops.
#[cfg(feature = "nats")]
pub use async_nats;

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared server's URL, or `None` (with a line saying the test skipped)
/// when `EDA_TEST_NATS_URL` is not set.
pub fn url() -> Option<String> {
    let url = std::env::var("EDA_TEST_NATS_URL").ok();
    if url.is_none() {
        eprintln!("skipped: set EDA_TEST_NATS_URL (nats://127.0.0.1:4222) to run the NATS tests");
    }
    url
}

/// A JetStream server of the test's own.
pub struct NatsServer {
    port: u16,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

/// Where `nats-server` is: on `PATH`, or Debian's `/usr/sbin`.
fn binary() -> PathBuf {
    let sbin = PathBuf::from("/usr/sbin/nats-server");
    if sbin.exists() {
        sbin
    } else {
        PathBuf::from("nats-server")
    }
}

impl NatsServer {
    /// Starts one on a free port; `None` (with a line saying the test
    /// skipped) if there is no `nats-server` to run.
    pub fn start() -> Option<NatsServer> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .map(|address| address.port())
            .expect("a free port");
        let mut server = NatsServer {
            port,
            dir: tempfile::tempdir().expect("a store directory"),
            child: None,
        };
        if server.spawn().is_err() {
            eprintln!("skipped: no nats-server to run");
            return None;
        }
        Some(server)
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) -> std::io::Result<()> {
        let child = Command::new(binary())
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let child = self.child.insert(child);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            // Exited: the port was taken meanwhile, say. What answers on it
            // then is not this server.
            if let Some(status) = child.try_wait()? {
                panic!("nats-server on port {} exited: {status}", self.port);
            }
            assert!(Instant::now() < deadline, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Kills the server (SIGKILL): what it stored stays in its directory.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port and directory.
    pub fn restart(&mut self) {
        self.kill();
        self.spawn().expect("nats-server restarts");
    }

    fn signal(&self, signal: &str) {
        if let Some(child) = &self.child {
            let status = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success());
        }
    }

    /// Stops the server's process (SIGSTOP): connections stay open, nothing
    /// is answered.
    pub fn pause(&self) {
        self.signal("-STOP");
    }

    /// Lets a paused server go on (SIGCONT).
    pub fn resume(&self) {
        self.signal("-CONT");
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.resume();
        self.kill();
    }
}

/// How many messages the stream of service `service` on `url` holds, as
/// JetStream counts them (a message stored twice counts twice).
#[cfg(feature = "nats")]
pub async fn stream_messages(url: &str, service: &str) -> u64 {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let jetstream = async_nats::jetstream::new(client);
    let mut stream = jetstream.get_stream(service).await.expect("the stream");
    stream
        .info()
        .await
        .expect("the stream's info")
        .state
        .messages
}

/// Deletes the stream of service `service` on `url`: what a test made on the
/// shared server does not outlive it.
#[cfg(feature = "nats")]
pub async fn delete_stream(url: &str, service: &str) {
    let client = async_nats::connect(url).await.expect("connect to NATS");
    let jetstream = async_nats::jetstream::new(client);
    jetstream
        .delete_stream(service)
        .await
        .expect("the stream deleted");
}
