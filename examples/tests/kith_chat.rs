//! `kith-chat` driven through its standard input, with no terminal: against
//! the real `kith-node` binary with a Rust client on the other side, and
//! alone with an embedded node.

#[path = "../../transport/tests/common/cluster.rs"]
mod cluster;

use std::{
    io::{BufRead as _, BufReader, Write as _},
    path::Path,
    process::{Child, ChildStdin, Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use futures::StreamExt as _;
use kith::{Client, Event, InboxId, LocalWallet};

/// How long one expected line may take.
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `kith-chat`: its input, and its output and error lines as
/// they come (a thread per stream forwards them).
struct Chat {
    child: Child,
    stdin: Option<ChildStdin>,
    out: mpsc::Receiver<String>,
    err: mpsc::Receiver<String>,
}

fn forward(stream: impl std::io::Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Wait for a line that satisfies `wanted`, failing with every line seen.
fn expect_line(
    lines: &mpsc::Receiver<String>,
    what: &str,
    wanted: impl Fn(&str) -> bool,
) -> String {
    let deadline = Instant::now() + LINE_TIMEOUT;
    let mut seen = Vec::new();
    let mut wait = || {
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if wanted(&line) => return line,
                Ok(line) => seen.push(line),
                Err(e) => panic!("no line {what} ({e}); saw {seen:#?}"),
            }
        }
    };
    // In an async test the runtime's threads also run Bob's connection:
    // tell tokio this one blocks.
    if tokio::runtime::Handle::try_current().is_ok() {
        tokio::task::block_in_place(wait)
    } else {
        wait()
    }
}

impl Chat {
    fn start(args: &[&str], data_dir: &Path) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_kith-chat"))
            .arg("--data-dir")
            .arg(data_dir)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kith-chat");
        let out = forward(child.stdout.take().expect("stdout"));
        let err = forward(child.stderr.take().expect("stderr"));
        Self {
            stdin: child.stdin.take(),
            child,
            out,
            err,
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        writeln!(stdin, "{line}").expect("write a command");
        stdin.flush().expect("flush");
    }

    fn out(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        expect_line(&self.out, what, wanted)
    }

    fn err(&self, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        expect_line(&self.err, what, wanted)
    }

    /// The inbox it prints on start.
    fn inbox(&self) -> InboxId {
        let line = self.out("with the inbox", |l| l.starts_with("inbox "));
        line.trim_start_matches("inbox ")
            .parse()
            .expect("an inbox id")
    }

    /// Close its input (or not) and wait for it to exit.
    fn wait(mut self, close_input: bool) -> ExitStatus {
        if close_input {
            self.stdin = None;
        }
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "kith-chat did not exit");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Chat {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kith_chat_talks_to_a_rust_client_through_a_kith_node() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let node = cluster::standalone(&dir.path().join("node"));
    let mut chat = Chat::start(&["--node", &node.url], &dir.path().join("cli"));
    let me = chat.inbox();
    chat.send("register");
    chat.out("confirming the registration", |l| {
        l == format!("registered {me}")
    });

    let bob = Client::builder()
        .wallet(LocalWallet::generate(&mut rand_core::OsRng))
        .data_dir(dir.path().join("bob"))
        .node(node.url.as_str())
        .build()
        .await
        .expect("bob's client");
    bob.register().await.expect("register");
    let mut bob_events = bob.stream_events();

    chat.send(&format!("create Climbing {}", bob.inbox_id()));
    let created = chat.out("naming the new group", |l| l.starts_with("created "));
    assert_eq!(created, "created #1 Climbing");
    chat.send("send hello");
    chat.out("confirming the send", |l| l == "sent");

    // Bob gets it, in a group named Climbing.
    let hello = tokio::time::timeout(LINE_TIMEOUT, async {
        loop {
            match bob_events.next().await.expect("bob's events") {
                Event::Message(message) if message.text() == Some("hello") => break message,
                _ => {}
            }
        }
    })
    .await
    .expect("bob receives hello");
    assert_eq!(hello.sender, me);
    let group = bob
        .conversation(&hello.conversation)
        .await
        .expect("bob is in the group");
    assert_eq!(
        group.metadata().await.expect("metadata").name.as_deref(),
        Some("Climbing")
    );

    // Bob answers; the chat shows it as it arrives, without a command.
    group
        .send_text("see you at the wall")
        .await
        .expect("bob replies");
    let live = chat.out("showing bob's reply", |l| {
        l.ends_with(": see you at the wall")
    });
    let bob_inbox = bob.inbox_id().to_string();
    let short = format!("{}…{}", &bob_inbox[..6], &bob_inbox[bob_inbox.len() - 4..]);
    assert!(live.starts_with('['), "{live}");
    assert!(
        live.ends_with(&format!("] {short}: see you at the wall")),
        "{live}"
    );

    // Mistakes are reported on standard error, and the chat goes on.
    chat.send("open nope");
    let error = chat.err("refusing `open nope`", |l| l.starts_with("error:"));
    assert!(error.contains("`nope`"), "{error}");
    chat.send("dm not-an-inbox");
    let error = chat.err("refusing a bad inbox", |l| l.starts_with("error:"));
    assert!(error.contains("`not-an-inbox` is not an inbox"), "{error}");
    chat.send("open 9");
    let error = chat.err("refusing an unknown number", |l| l.starts_with("error:"));
    assert!(error.contains("no conversation #9"), "{error}");
    chat.send("frobnicate");
    let error = chat.err("refusing an unknown command", |l| l.starts_with("error:"));
    assert!(error.contains("unknown command `frobnicate`"), "{error}");

    chat.send("whoami");
    chat.out("still answering", |l| l == format!("inbox {me}"));
    chat.send("list");
    let listed = chat.out("listing the group", |l| l.contains("Climbing"));
    let id = hello.conversation.to_string();
    assert!(listed.starts_with("* 1  group"), "{listed}");
    assert!(listed.ends_with(&id), "{listed}");
    chat.send("history");
    chat.out("the first message", |l| l.ends_with("] me: hello"));
    chat.out("the reply", |l| {
        l.ends_with(&format!("] {short}: see you at the wall"))
    });
    chat.send("members");
    chat.out("bob among the members", |l| {
        l.starts_with(&bob_inbox) && l.ends_with("1 installation")
    });

    // Opening by id works as well as by number.
    chat.send(&format!("open {id}"));
    chat.out("opening by id", |l| l == "opened #1 Climbing");

    // Bob adds the chat to a group of his: it is told, and told once that
    // a message waits there; with `watch`, messages there are shown too.
    let bobs = bob
        .create_group(&[me], kith::GroupOptions::default().name("Bob's"))
        .await
        .expect("bob's group");
    chat.out("announcing the new group", |l| {
        l == "you were added to #2 Bob's"
    });
    bobs.send_text("ping").await.expect("send");
    chat.out("announcing the message", |l| {
        l == "new message in #2 Bob's: `open 2` to read it"
    });
    chat.send("watch");
    chat.out("watching everything", |l| {
        l == "showing new messages of every conversation"
    });
    bobs.send_text("pong").await.expect("send");
    chat.out("showing the watched message", |l| {
        l.starts_with("(#2 Bob's) [") && l.ends_with(&format!("] {short}: pong"))
    });

    chat.send("quit");
    let status = chat.wait(false);
    assert!(status.success(), "{status:?}");
    drop((group, bobs));
    bob.shutdown().await.expect("shutdown");
}

#[test]
fn kith_chat_runs_alone_on_an_embedded_node_and_reopens_its_directory() {
    let dir = tempfile::tempdir().expect("temporary directory");
    let data = dir.path().join("solo");
    let mut chat = Chat::start(&["--embedded"], &data);
    let me = chat.inbox();
    chat.send("send too early");
    let error = chat.err("refusing a send with nothing open", |l| {
        l.starts_with("error:")
    });
    assert!(error.contains("no conversation is open"), "{error}");
    chat.send("register");
    chat.out("confirming the registration", |l| {
        l == format!("registered {me}")
    });
    chat.send("list");
    chat.out("an empty list", |l| l.starts_with("no conversations yet"));
    chat.send("create \"Notes to self\"");
    chat.out("naming the group", |l| l == "created #1 Notes to self");
    chat.send("send buy rope");
    chat.out("confirming the send", |l| l == "sent");
    // Nobody else is registered on this node.
    let stranger = LocalWallet::generate(&mut rand_core::OsRng).inbox_id();
    chat.send(&format!("dm {stranger}"));
    let error = chat.err("refusing a DM with an unknown inbox", |l| {
        l.starts_with("error:")
    });
    assert!(error.contains("no registered installations"), "{error}");
    // The end of input ends the chat, cleanly.
    let status = chat.wait(true);
    assert!(status.success(), "{status:?}");

    // The same directory again: the same inbox, and the group and its
    // message are still there.
    let mut chat = Chat::start(&["--embedded"], &data);
    assert_eq!(chat.inbox(), me);
    chat.send("list");
    let listed = chat.out("the group", |l| l.contains("Notes to self"));
    assert!(listed.starts_with("  1  group"), "{listed}");
    chat.send("open 1");
    chat.out("opening it", |l| l == "opened #1 Notes to self");
    chat.send("history");
    chat.out("the message", |l| l.ends_with("] me: buy rope"));
    chat.send("quit");
    let status = chat.wait(false);
    assert!(status.success(), "{status:?}");
}
