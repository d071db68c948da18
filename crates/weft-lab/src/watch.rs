//! A process left running inside one of the lab's namespaces, its output read line by line as
//! rounds, each a reply that came back or not: how the tests and the demo watch a ping or a
//! held connection across a policy change.

use std::io::BufRead;
use std::process::{Child, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use weft_agent::netns;

use crate::Result;

/// Reads one output line as a round: `Some(true)` came back, `Some(false)` did not, `None`
/// is no round.
pub type Reading = fn(&str) -> Option<bool>;

/// `weft lab ping` ([`crate::icmp::round_line`]): a reply, or no answer.
pub fn ping_round(line: &str) -> Option<bool> {
    if line.starts_with("reply from ") {
        Some(true)
    } else if line.starts_with("no answer from ") {
        Some(false)
    } else {
        None
    }
}

/// `weft lab talk`: `ok N` came back, `lost N` and `closed` did not.
pub fn talk_round(line: &str) -> Option<bool> {
    if line.starts_with("ok ") {
        Some(true)
    } else if line.starts_with("lost ") || line == "closed" {
        Some(false)
    } else {
        None
    }
}

/// The process, killed when dropped, and every line it printed so far.
#[derive(Debug)]
pub struct Watch {
    child: Child,
    lines: mpsc::Receiver<String>,
    reading: Reading,
    /// Every line read, for saying what happened when a wait fails.
    pub seen: Vec<String>,
}

impl Watch {
    /// Runs `program` with `args` inside the namespace `netns`.
    pub fn spawn(netns: &str, program: &str, args: &[&str], reading: Reading) -> Result<Watch> {
        let mut command = std::process::Command::new(program);
        command.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null());
        let child = netns::spawn(Some(netns), &mut command)?;
        Ok(Watch::of(child, reading))
    }

    /// Watches a process already started with its stdout piped.
    pub fn of(mut child: Child, reading: Reading) -> Watch {
        let (tx, lines) = mpsc::channel();
        if let Some(stdout) = child.stdout.take() {
            std::thread::spawn(move || {
                for line in std::io::BufReader::new(stdout).lines().map_while(std::result::Result::ok) {
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        Watch { child, lines, reading, seen: Vec::new() }
    }

    /// The next line, if one comes within `within`.
    pub fn next_line(&mut self, within: Duration) -> Option<String> {
        let line = self.lines.recv_timeout(within).ok()?;
        self.seen.push(line.clone());
        Some(line)
    }

    /// Whether `n` rounds in a row came back (`answered`) or did not, within `within`.
    pub fn in_a_row(&mut self, answered: bool, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        let mut run = 0;
        while run < n {
            let Some(line) = self.next_line(deadline.saturating_duration_since(Instant::now())) else {
                return false;
            };
            match (self.reading)(&line) {
                Some(round) if round == answered => run += 1,
                Some(_) => run = 0,
                None => {}
            }
        }
        true
    }

    /// The rounds read since the last call, without waiting.
    pub fn rounds(&mut self) -> Vec<bool> {
        let mut out = Vec::new();
        while let Ok(line) = self.lines.try_recv() {
            out.extend((self.reading)(&line));
            self.seen.push(line);
        }
        out
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
