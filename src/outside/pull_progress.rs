//! Pull progress for a person at a terminal: one line, redrawn in place, with layers and
//! bytes. Never used when stderr is not a terminal (systemd, pipes): log lines only there.

use std::collections::BTreeMap;
use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Whether a pull is running and when it last reported progress: shared between the Engine,
/// which marks a pull's start and end and touches it on every item of its stream, and the
/// launch gate, which keeps a lifecycle action alive only while a pull is moving.
#[derive(Debug, Clone, Default)]
pub struct PullActivity(Arc<Mutex<Activity>>);

#[derive(Debug, Default)]
struct Activity {
    /// Pulls running now.
    running: usize,
    last_progress: Option<Instant>,
    /// When the last pull ended: the container start and probe that follow it are part of the
    /// same deploy.
    last_end: Option<Instant>,
}

/// Marks a pull as running until dropped.
pub struct PullRunning(PullActivity);

impl Drop for PullRunning {
    fn drop(&mut self) {
        let mut activity = self.0 .0.lock().unwrap();
        activity.running = activity.running.saturating_sub(1);
        activity.last_end = Some(Instant::now());
    }
}

impl PullActivity {
    /// A pull starts; it counts as running until the returned guard is dropped.
    pub fn begin(&self) -> PullRunning {
        let mut activity = self.0.lock().unwrap();
        activity.running += 1;
        activity.last_progress = Some(Instant::now());
        PullRunning(self.clone())
    }

    /// The running pull reported progress.
    pub fn touch(&self) {
        self.0.lock().unwrap().last_progress = Some(Instant::now());
    }

    /// Whether a pull is running and reported progress within `window`, or one ended within
    /// `window` (its deploy is still starting and probing the container).
    pub fn moving(&self, window: Duration) -> bool {
        let activity = self.0.lock().unwrap();
        let recent = |t: Option<Instant>| t.is_some_and(|t| t.elapsed() <= window);
        (activity.running > 0 && recent(activity.last_progress)) || recent(activity.last_end)
    }
}

#[cfg(test)]
mod activity_tests {
    use super::*;

    #[test]
    fn a_pull_moves_while_it_reports_progress_and_shortly_after_it_ends() {
        let activity = PullActivity::default();
        assert!(!activity.moving(Duration::from_secs(60)));
        let running = activity.begin();
        assert!(activity.moving(Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(20));
        assert!(!activity.moving(Duration::from_millis(10)), "no progress for longer than the window");
        activity.touch();
        assert!(activity.moving(Duration::from_millis(10)));
        drop(running);
        assert!(activity.moving(Duration::from_secs(60)), "its deploy goes on right after the pull");
        std::thread::sleep(Duration::from_millis(20));
        assert!(!activity.moving(Duration::from_millis(10)), "a pull that ended longer ago than the window");
    }
}

/// Redraw at most this often: a pull emits hundreds of progress messages a second.
const REDRAW_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub struct PullProgress {
    /// Layer id -> (bytes done, bytes total, finished).
    layers: BTreeMap<String, (i64, i64, bool)>,
    last_draw: Option<Instant>,
}

impl PullProgress {
    /// Takes one item of Docker's pull stream.
    pub fn update(&mut self, layer: Option<&str>, status: &str, current: Option<i64>, total: Option<i64>) {
        let Some(layer) = layer.filter(|l| l.len() == 12) else { return };
        let entry = self.layers.entry(layer.to_owned()).or_default();
        if let (Some(c), Some(t)) = (current, total) {
            entry.0 = c;
            entry.1 = t.max(entry.1);
        }
        if matches!(status, "Pull complete" | "Already exists" | "Download complete") {
            entry.0 = entry.1;
            entry.2 = status != "Download complete" || entry.2;
        }
    }

    /// The progress line.
    pub fn line(&self, image: &str) -> String {
        let done = self.layers.values().filter(|l| l.2).count();
        let (cur, tot) = self.layers.values().fold((0, 0), |(c, t), l| (c + l.0, t + l.1));
        let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
        let width = 24usize;
        let filled = if tot > 0 { ((cur as f64 / tot as f64) * width as f64) as usize } else { 0 };
        format!(
            "pulling {image} [{}{}] {done}/{} layers, {:.1}/{:.1} MiB",
            "#".repeat(filled.min(width)),
            " ".repeat(width - filled.min(width)),
            self.layers.len(),
            mib(cur),
            mib(tot)
        )
    }

    /// Redraws on stderr, throttled.
    pub fn draw(&mut self, image: &str) {
        if self.last_draw.is_some_and(|t| t.elapsed() < REDRAW_EVERY) {
            return;
        }
        self.last_draw = Some(Instant::now());
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K{}", self.line(image));
        let _ = err.flush();
    }

    /// Final state and a newline.
    pub fn finish(&mut self, image: &str) {
        self.last_draw = None;
        self.draw(image);
        eprintln!();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_layers_and_bytes() {
        let mut p = PullProgress::default();
        p.update(Some("aaaaaaaaaaaa"), "Downloading", Some(512 * 1024), Some(1024 * 1024));
        p.update(Some("bbbbbbbbbbbb"), "Already exists", None, None);
        p.update(Some("latest"), "Pulling from blog", None, None);
        let line = p.line("r/blog:abc");
        assert!(line.contains("1/2 layers") && line.contains("0.5/1.0 MiB"), "{line}");
        p.update(Some("aaaaaaaaaaaa"), "Pull complete", None, None);
        assert!(p.line("r/blog:abc").contains("2/2 layers, 1.0/1.0 MiB"));
    }
}
