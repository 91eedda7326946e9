//! Real `kith-node` processes replicating on loopback, for the tests of
//! several crates (each takes this file with `#[path]`).

#![allow(dead_code, unreachable_pub)]

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

/// The `kith-node` binary of this workspace's target directory, built if
/// it is not there yet (when only another crate's tests run).
pub fn node_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target directory");
    let binary = dir.join("kith-node");
    if !binary.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "kith-transport", "--bin", "kith-node"])
            .status()
            .expect("run cargo");
        assert!(status.success(), "building kith-node failed");
    }
    binary
}

/// One `kith-node` on its own (no peers), with its default limits, on a
/// free loopback port; killed on drop.
pub struct Standalone {
    pub child: Child,
    pub url: String,
}

/// Start a standalone node on `data_dir` and wait until it listens (its
/// first line names the port it took).
pub fn standalone(data_dir: &Path) -> Standalone {
    standalone_with(&["--data-dir".as_ref(), data_dir.as_os_str()])
}

/// Start a standalone node with `store_args` (`--data-dir DIR` or
/// `--database-url URL`) on a free loopback port, and wait until it
/// listens.
pub fn standalone_with<S: AsRef<std::ffi::OsStr>>(store_args: &[S]) -> Standalone {
    let mut child = Command::new(node_binary())
        .args(store_args)
        .args(["--listen", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start kith-node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the listening line");
    let address = line
        .trim()
        .strip_prefix("kith-node listening on ")
        .unwrap_or_else(|| panic!("kith-node did not start: {line:?}"))
        .to_owned();
    Standalone {
        child,
        url: format!("http://{address}"),
    }
}

impl Drop for Standalone {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One node of a test cluster: its store, id, port and key, and its
/// process while it runs.
pub struct Node {
    pub id: u32,
    pub dir: PathBuf,
    pub port: u16,
    pub key: String,
    pub child: Option<Child>,
}

impl Node {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// A free loopback port (the kernel's pick, released for the node to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .expect("a free loopback port")
        .port()
}

pub fn node_command(dir: &Path) -> Command {
    let mut command = Command::new(node_binary());
    command.arg("--data-dir").arg(dir);
    command
}

/// The node key kept in `dir` (made there if new), from `--print-key`.
pub fn print_key(dir: &Path) -> String {
    let output = node_command(dir)
        .arg("--print-key")
        .output()
        .expect("run kith-node --print-key");
    assert!(output.status.success(), "--print-key failed: {output:?}");
    String::from_utf8(output.stdout)
        .expect("utf-8")
        .trim()
        .to_owned()
}

/// `n` nodes, ids 1 to n, each in its own directory under `root`.
pub fn cluster(root: &Path, n: u32) -> Vec<Node> {
    (1..=n)
        .map(|id| {
            let dir = root.join(format!("node-{id}"));
            Node {
                id,
                key: print_key(&dir),
                port: free_port(),
                dir,
                child: None,
            }
        })
        .collect()
}

/// Start `nodes[i]` with every other node as its peer, and `extra` flags.
pub fn start(nodes: &mut [Node], i: usize, extra: &[&str]) {
    start_via(nodes, i, extra, |peer| peer.url());
}

/// Start `nodes[i]` with every other node as its peer, reached at
/// `url(peer)` (a [`Link`] in front of it, say), and `extra` flags.
pub fn start_via(nodes: &mut [Node], i: usize, extra: &[&str], url: impl Fn(&Node) -> String) {
    let peers: Vec<String> = nodes
        .iter()
        .filter(|peer| peer.id != nodes[i].id)
        .map(|peer| format!("{}={}@{}", peer.id, peer.key, url(peer)))
        .collect();
    let node = &nodes[i];
    let mut command = node_command(&node.dir);
    command
        .args(["--node-id", &node.id.to_string()])
        .args(["--listen", &format!("127.0.0.1:{}", node.port)])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for peer in &peers {
        command.args(["--peer", peer]);
    }
    let mut child = command.spawn().expect("start kith-node");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("read the listening line");
    assert!(
        line.starts_with("kith-node listening on "),
        "node {} did not start: {line:?}",
        node.id
    );
    nodes[i].child = Some(child);
}

pub fn kill(node: &mut Node) {
    if let Some(mut child) = node.child.take() {
        child.kill().expect("kill -9");
        child.wait().expect("reap");
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        kill(self);
    }
}

/// A TCP link on loopback in front of one node, which a test can cut (a
/// partition: open connections drop, new ones are closed at once) and
/// heal. Nodes reach their peers through links to be cut off from them
/// while their own clients still reach them.
pub struct Link {
    port: u16,
    cut: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Link {
    /// A link to `target` (a loopback port), open.
    pub async fn open(target: u16) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind a loopback port");
        let port = listener.local_addr().expect("local address").port();
        let (cut, watch) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if *watch.borrow() {
                    continue;
                }
                let mut watch = watch.clone();
                tokio::spawn(async move {
                    let Ok(mut outbound) =
                        tokio::net::TcpStream::connect(("127.0.0.1", target)).await
                    else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = watch.wait_for(|cut| *cut) => {}
                    }
                });
            }
        });
        Self { port, cut, task }
    }

    /// The URL to give a node as its peer's.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Drop every connection through the link, and refuse new ones.
    pub fn cut(&self) {
        self.cut.send_replace(true);
    }

    /// Let connections through again.
    pub fn heal(&self) {
        self.cut.send_replace(false);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}
