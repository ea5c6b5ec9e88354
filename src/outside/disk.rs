//! The disk a pull lands on: Docker's data root, its free space, and whether a pull fits.
//!
//! A pull that fills the disk fails half-way, after minutes of downloading, and leaves the
//! host short for its logs and Docker's own bookkeeping. So before a pull [`make_room`]
//! compares the free space on Docker's data root (`GET /info` `DockerRootDir`; statvfs, the
//! blocks available to processes, as `df` counts them) with the image's size from its
//! manifest ([`crate::outside::manifest`]) plus `[reconcile] min_free_disk`. When short, it
//! removes the repository's images this host will not need ([`unneeded`]) and measures again;
//! still short, the pull is not started ([`NoRoom::Short`]): the running version keeps serving
//! and `sync`, `status`, `check`, the metrics and the launch gate say why, with the numbers and
//! the fix. A pull Docker fails with ENOSPC becomes [`NoRoom::Filled`], reported the same way.
//!
//! Reads: Docker's data root and images, the state file (the last-known-good and previous-good
//! releases: the rollback targets), statvfs, the registry's manifest. Writes: removes images of
//! the repository that nothing needs. Decides: [`enough_space`] and [`unneeded`] (pure).

use std::path::{Path, PathBuf};

use crate::config::{format_size, Settings};
use crate::outside::docker::{Engine, EngineError, RepoImage};
use crate::outside::registry::RegistryCredentials;

/// What to do about it, in every message that says the disk is short.
const FIX: &str = "free space there (`docker system df` shows what Docker holds), grow the volume, or lower \
                   [reconcile] min_free_disk";

/// Whether a pull fits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Enough,
    /// `need` bytes must be free, `missing` more than are.
    Short {
        need: u64,
        missing: u64,
    },
}

/// Whether `free` bytes hold an image of `image_size` bytes (unknown: nothing counted for it)
/// and leave `min_free` free.
pub fn enough_space(free: u64, image_size: Option<u64>, min_free: u64) -> Verdict {
    let need = image_size.unwrap_or(0).saturating_add(min_free);
    if free >= need {
        Verdict::Enough
    } else {
        Verdict::Short { need, missing: need - free }
    }
}

/// The images of the repository this host will not need: not used by any container (the
/// running one, `-previous`, a stopped one), and not tagged as one of `keep` (references of
/// the release being pulled and the rollback targets).
pub fn unneeded<'a>(images: &'a [RepoImage], in_use: &[String], keep: &[String]) -> Vec<&'a RepoImage> {
    images.iter().filter(|i| !in_use.contains(&i.id) && !i.tags.iter().any(|t| keep.contains(t))).collect()
}

/// Bytes available to processes on the filesystem holding `path` (`df`'s "Avail").
pub fn free_space(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let mut stat = std::mem::MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: `c_path` is a NUL-terminated string that outlives the call, and `stat` points to
    // writable memory of the struct's size; statvfs fills it whole when it returns 0.
    let rc = unsafe { libc::statvfs(c_path.as_ptr(), stat.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: initialised by the successful call above.
    let stat = unsafe { stat.assume_init() };
    // Both are u64 on 64-bit Linux, narrower on some 32-bit targets.
    #[allow(clippy::useless_conversion)]
    let (blocks, block_size) = (u64::from(stat.f_bavail), u64::from(stat.f_frsize));
    Ok(blocks.saturating_mul(block_size))
}

/// `bytes` for a person: binary units with one decimal, as `df -h` shows them.
pub fn human(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["KiB", "MiB", "GiB", "TiB", "PiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Docker's data root and its free space, now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub root: PathBuf,
    pub free: u64,
}

/// Measures Docker's data root.
pub async fn measure(engine: &Engine) -> Result<Reading, String> {
    let root = engine.data_root().await.map_err(|e| e.to_string())?;
    let free = free_space(&root).map_err(|e| format!("statvfs {}: {e}", root.display()))?;
    Ok(Reading { root, free })
}

/// A pull refused before it started: the numbers behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shortage {
    pub image: String,
    pub root: PathBuf,
    pub free: u64,
    /// From the manifest; `None`: unknown, so `min_free` alone was required.
    pub image_size: Option<u64>,
    pub min_free: u64,
    pub need: u64,
    /// Images removed to make room before giving up.
    pub removed: usize,
}

impl std::fmt::Display for Shortage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let parts = match self.image_size {
            Some(size) => format!(
                "{} for the image (from its manifest) and {} of [reconcile] min_free_disk",
                human(size),
                format_size(self.min_free)
            ),
            None => format!(
                "the image's size is unknown, so [reconcile] min_free_disk = {} alone",
                format_size(self.min_free)
            ),
        };
        let removed = match self.removed {
            0 => "no image this host does not need was left to remove".to_owned(),
            n => format!("{n} image(s) this host does not need were removed first"),
        };
        write!(
            f,
            "not enough disk space to pull {}: Docker's data root {} has {} free, the pull needs {}: {parts}; {} \
             short, {removed}. The pull was not started and the running version keeps serving. Fix: {FIX}",
            self.image,
            self.root.display(),
            human(self.free),
            human(self.need),
            human(self.need.saturating_sub(self.free)),
        )
    }
}

/// Why a release's image cannot be had for lack of disk space.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoom {
    /// Measured short before the pull: it was not started.
    #[error("{0}")]
    Short(Shortage),
    /// Docker ran out of space during the pull (ENOSPC); `reading`: the data root afterwards.
    #[error(
        "pulling {image} filled the disk ({detail}){}; the running version keeps serving. Fix: {FIX}",
        reading.as_ref().map(|r| format!(": Docker's data root {} has {} free now, and [reconcile] min_free_disk is {}",
            r.root.display(), human(r.free), format_size(*min_free))).unwrap_or_default()
    )]
    Filled { image: String, detail: String, reading: Option<Reading>, min_free: u64 },
}

impl NoRoom {
    /// Free bytes on Docker's data root when it was last measured.
    pub fn free(&self) -> Option<u64> {
        match self {
            NoRoom::Short(s) => Some(s.free),
            NoRoom::Filled { reading, .. } => reading.as_ref().map(|r| r.free),
        }
    }

    /// Bytes the pull needed free (image and margin), when known.
    pub fn need(&self) -> Option<u64> {
        match self {
            NoRoom::Short(s) => Some(s.need),
            NoRoom::Filled { .. } => None,
        }
    }
}

/// Before pulling `reference` (a tag or a digest) of the release `sha`: makes sure it fits on
/// Docker's data root with `[reconcile] min_free_disk` to spare, removing images this host will
/// not need if it does not. A disk that cannot be measured is logged and the pull goes ahead
/// (a pull that then fills it is [`NoRoom::Filled`]); a size that cannot be learnt is logged
/// and `min_free_disk` alone is required.
pub async fn make_room(
    engine: &Engine,
    settings: &Settings,
    sha: &str,
    reference: &str,
    creds: &RegistryCredentials,
) -> Result<(), NoRoom> {
    let repo = &settings.image.repository;
    let image = match reference.starts_with("sha256:") {
        true => format!("{repo}@{reference}"),
        false => repo.reference(reference),
    };
    let min_free = settings.reconcile.min_free_disk;
    let reading = match measure(engine).await {
        Ok(reading) => reading,
        Err(e) => {
            tracing::warn!(image = %image, "cannot measure the free space on Docker's data root ({e}); pulling without a disk check");
            return Ok(());
        }
    };
    let size = match crate::outside::manifest::image_size(&repo.registry, &repo.path, reference, creds).await {
        Ok(size) => Some(size),
        Err(e) => {
            tracing::warn!(
                image = %image,
                "cannot learn the size of {image} before pulling it ({e}); requiring [reconcile] min_free_disk ({}) free alone",
                format_size(min_free)
            );
            None
        }
    };
    let Verdict::Short { need, .. } = enough_space(reading.free, size, min_free) else {
        tracing::debug!(image = %image, free = reading.free, size, min_free, "enough disk space for the pull");
        return Ok(());
    };
    tracing::warn!(
        image = %image, root = %reading.root.display(), free = reading.free, need,
        "{} free on {}, {} needed to pull {image}: removing images this host does not need",
        human(reading.free), reading.root.display(), human(need)
    );
    let removed = remove_unneeded(engine, settings, sha).await;
    let free = free_space(&reading.root).unwrap_or(reading.free);
    match enough_space(free, size, min_free) {
        Verdict::Enough => {
            tracing::info!(image = %image, removed, free, "made room for {image}: removed {removed} image(s); {} free", human(free));
            Ok(())
        }
        Verdict::Short { need, .. } => {
            Err(NoRoom::Short(Shortage { image, root: reading.root, free, image_size: size, min_free, need, removed }))
        }
    }
}

/// A pull Docker failed with ENOSPC, as [`NoRoom::Filled`] with the data root measured now.
pub async fn filled(engine: &Engine, settings: &Settings, image: &str, detail: &str) -> NoRoom {
    NoRoom::Filled {
        image: image.to_owned(),
        detail: detail.to_owned(),
        reading: measure(engine).await.ok(),
        min_free: settings.reconcile.min_free_disk,
    }
}

/// Removes the repository's images nothing needs (see [`unneeded`]), keeping the release
/// `sha` and the last-known-good and previous-good ones. Returns how many went; failures are
/// logged, the check that follows counts what is left.
async fn remove_unneeded(engine: &Engine, settings: &Settings, sha: &str) -> usize {
    let repo = &settings.image.repository;
    let state = crate::state::State::load(&settings.agent.state_dir);
    let keep: Vec<String> = [Some(sha.to_owned()), state.last_good.map(|g| g.sha), state.previous_good.map(|g| g.sha)]
        .into_iter()
        .flatten()
        .map(|sha| repo.reference(&sha))
        .collect();
    let listed =
        async { Ok::<_, EngineError>((engine.images_in_use().await?, engine.repo_images(&repo.to_string()).await?)) };
    let (in_use, images) = match listed.await {
        Ok(listed) => listed,
        Err(e) => {
            tracing::warn!(error = %e, "cannot list images to make room");
            return 0;
        }
    };
    let mut removed = 0;
    for image in unneeded(&images, &in_use, &keep) {
        match engine.remove_image(&image.id).await {
            Ok(()) => {
                tracing::info!(image = %image.tags.join(","), "removed an image this host does not need, to make room");
                removed += 1;
            }
            Err(e) => tracing::warn!(image = %image.id, error = %e, "could not remove an unneeded image"),
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn a_pull_fits_when_the_image_and_the_margin_do() {
        let cases = [
            // (free, image size, min free) -> verdict
            (10 * GIB, Some(GIB), 2 * GIB, Verdict::Enough),
            (3 * GIB, Some(GIB), 2 * GIB, Verdict::Enough),
            (3 * GIB - 1, Some(GIB), 2 * GIB, Verdict::Short { need: 3 * GIB, missing: 1 }),
            (GIB, Some(GIB), 2 * GIB, Verdict::Short { need: 3 * GIB, missing: 2 * GIB }),
            // Size unknown: the margin alone.
            (2 * GIB, None, 2 * GIB, Verdict::Enough),
            (GIB, None, 2 * GIB, Verdict::Short { need: 2 * GIB, missing: GIB }),
            // No margin: only the image.
            (GIB, Some(GIB), 0, Verdict::Enough),
            (0, Some(1), 0, Verdict::Short { need: 1, missing: 1 }),
            (0, None, 0, Verdict::Enough),
            // "100TB" on any real disk.
            (
                70 * GIB,
                Some(GIB),
                100_000_000_000_000,
                Verdict::Short { need: 100_000_000_000_000 + GIB, missing: 100_000_000_000_000 + GIB - 70 * GIB },
            ),
            // Sizes near the top do not wrap round.
            (u64::MAX, Some(u64::MAX), u64::MAX, Verdict::Enough),
            (u64::MAX - 1, Some(u64::MAX), 1, Verdict::Short { need: u64::MAX, missing: 1 }),
        ];
        for (free, size, min_free, want) in cases {
            assert_eq!(enough_space(free, size, min_free), want, "free {free}, image {size:?}, min_free {min_free}");
        }
    }

    #[test]
    fn only_images_nothing_needs_are_removed() {
        let image = |id: &str, tags: &[&str]| RepoImage {
            id: id.into(),
            tags: tags.iter().map(|t| format!("r/blog:{t}")).collect(),
            created: 0,
        };
        let images = [
            image("running", &["aaa"]),
            image("previous-container", &["bbb"]),
            image("last-good", &["ccc"]),
            image("previous-good", &["ddd"]),
            image("old", &["eee"]),
            image("older", &["fff", "ggg"]),
            image("also-kept", &["hhh", "ccc"]),
        ];
        let in_use = ["running".to_owned(), "previous-container".to_owned()];
        let keep = ["r/blog:ccc".to_owned(), "r/blog:ddd".to_owned(), "r/blog:target".to_owned()];
        let gone: Vec<&str> = unneeded(&images, &in_use, &keep).iter().map(|i| i.id.as_str()).collect();
        assert_eq!(gone, ["old", "older"]);
        assert!(unneeded(&images, &[], &[]).len() == images.len());
    }

    #[test]
    fn the_data_root_s_free_space_is_what_df_calls_available() {
        let free = free_space(Path::new("/")).unwrap();
        assert!(free > 0);
        let err = free_space(Path::new("/nonexistent/blog-agent")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
    }

    #[test]
    fn sizes_read_as_df_shows_them() {
        let cases = [
            (0, "0 bytes"),
            (1023, "1023 bytes"),
            (1024, "1.0 KiB"),
            (1536, "1.5 KiB"),
            (2 * GIB, "2.0 GiB"),
            (100_000_000_000_000, "90.9 TiB"),
        ];
        for (bytes, want) in cases {
            assert_eq!(human(bytes), want, "{bytes}");
        }
    }

    #[test]
    fn a_shortage_names_the_numbers_and_the_fix_on_one_line() {
        let short = Shortage {
            image: "r/blog:abc".into(),
            root: "/var/lib/docker".into(),
            free: 5 * GIB,
            image_size: Some(GIB / 2),
            min_free: 100_000_000_000_000,
            need: 100_000_000_000_000 + GIB / 2,
            removed: 2,
        };
        let text = NoRoom::Short(short.clone()).to_string();
        for want in [
            "r/blog:abc",
            "/var/lib/docker has 5.0 GiB free",
            "512.0 MiB for the image (from its manifest) and 100TB of [reconcile] min_free_disk",
            "2 image(s) this host does not need were removed",
            "the running version keeps serving",
            "lower [reconcile] min_free_disk",
        ] {
            assert!(text.contains(want), "{want:?} not in: {text}");
        }
        assert!(!text.contains('\n'));
        let unknown = Shortage { image_size: None, removed: 0, ..short }.to_string();
        assert!(unknown.contains("size is unknown, so [reconcile] min_free_disk = 100TB alone"), "{unknown}");
        assert!(unknown.contains("no image this host does not need was left"), "{unknown}");
        let filled = NoRoom::Filled {
            image: "r/blog:abc".into(),
            detail: "write /var/lib/docker/tmp/x: no space left on device".into(),
            reading: Some(Reading { root: "/var/lib/docker".into(), free: 0 }),
            min_free: 2 * GIB,
        };
        let text = filled.to_string();
        assert!(
            text.contains("filled the disk") && text.contains("has 0 bytes free now") && text.contains("2GiB"),
            "{text}"
        );
        assert_eq!((filled.free(), filled.need()), (Some(0), None));
    }
}
