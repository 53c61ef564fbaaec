//! The shared-memory core: one file on tmpfs, mapped by every engine process.
//!
//! Owns the file's lifecycle (create exactly once, attach, validate, purge) and hands out
//! typed views of its sections: the payment [`Ring`], the [`StatsLog`], the per-member
//! in-flight tables ([`Member`]), the [`HealthBoard`] and the id set ([`ids`]).
//! The byte layout is `shm-layout.md` at the top of the repository; `layout_doc_matches`
//! in the tests keeps the two equal.
//!
//! Contract:
//! - [`Region::open`] creates the file if it is absent (the file appears under its name only
//!   once fully initialised: it is built under a temporary name and hard-linked into place,
//!   so racing creators cannot both win and attachers never see a half-written header), or
//!   attaches it and validates magic, layout version, size and capacities. A file that fails
//!   validation is never overwritten: the error names the file and the mismatch.
//! - Every process that pushes or takes calls [`Region::join`] once; the returned [`Member`]
//!   holds an OFD lock on its process-table entry for the life of the process, which is how
//!   survivors tell a dead member from a slow one, across containers.
//!
//! ```
//! use rinha::shm::{Region, RegionConfig, Role, Payment, Processor};
//! use std::sync::Arc;
//! let path = std::env::temp_dir().join(format!("rinha-doc-{}", std::process::id()));
//! let cfg = RegionConfig { ring_capacity: 1024, log_capacity: 4096, max_members: 4,
//!                          inflight_per_member: 64, id_capacity: 1024 };
//! let region = Arc::new(Region::open(&path, &cfg).unwrap());
//! let me = region.join(Role::Consumer).unwrap();
//! let p = Payment { id: [1; 16], cents: 2005, ..Payment::default() };
//! region.ring().push(&me, &p).unwrap();
//! let slot = region.ring().take(&me, Some(std::time::Duration::ZERO)).unwrap();
//! assert_eq!(me.payment(slot).cents, 2005);
//! me.complete(slot, Processor::Default, 1_000).unwrap();
//! assert_eq!(region.stats().summary(None, None).default.cents, 2005);
//! std::fs::remove_file(&path).unwrap();
//! ```
pub mod health;
pub mod ids;
#[cfg(all(test, rinha_loom))]
mod loom_model;
pub mod member;
pub mod ring;
pub mod stats_log;
mod sys;
pub mod worker;

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

pub use health::{HealthBoard, ProcessorHealth, LEASE_STALE_MS};
pub use member::{InFlightId, Member, Role};
pub use ring::{Ring, RingFull};
pub use stats_log::{LogFull, StatsLog, Summary, Totals};

use sys::{Mapping, Shared};

/// "RINHASHM" in ASCII, little endian: the first 8 bytes of every region file.
pub const MAGIC: u64 = u64::from_le_bytes(*b"RINHASHM");
/// Bumped on every change of the byte layout or of what its words mean (see shm-layout.md).
/// 2: the id set's tag carries a fingerprint (`src/shm/ids.rs`).
pub const LAYOUT_VERSION: u32 = 2;
/// Size of the header page.
pub const HEADER_SIZE: usize = 4096;
/// Bytes of one process-table entry (and of the OFD lock range that says it is alive).
pub const MEMBER_ENTRY_SIZE: usize = 64;

/// Which processor accepted a payment.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug, Hash)]
#[repr(u8)]
pub enum Processor {
    /// The cheaper one.
    Default = 0,
    /// The backup.
    Fallback = 1,
}

impl Processor {
    /// Both, in index order.
    pub const ALL: [Processor; 2] = [Processor::Default, Processor::Fallback];

    /// 0 or 1.
    pub fn index(self) -> usize {
        self as usize
    }

    /// From [`Processor::index`].
    pub fn from_index(i: u64) -> Option<Processor> {
        match i {
            0 => Some(Processor::Default),
            1 => Some(Processor::Fallback),
            _ => None,
        }
    }

    /// The name used in JSON: `default` or `fallback`.
    pub fn name(self) -> &'static str {
        match self {
            Processor::Default => "default",
            Processor::Fallback => "fallback",
        }
    }
}

/// A payment as it travels through the ring and the in-flight tables.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Payment {
    /// correlationId, binary UUID.
    pub id: [u8; 16],
    /// Amount in integer cents.
    pub cents: u64,
    /// When the API accepted it (ms since the epoch).
    pub received_at_ms: i64,
    /// Sends so far.
    pub attempts: u32,
    /// 0 none yet, 1 default, 2 fallback: where an unresolved attempt may be stored.
    pub first_processor: u8,
    /// The requestedAt sent on that attempt (0 = none).
    pub first_requested_at_ms: i64,
}

impl Payment {
    /// The processor of the unresolved attempt, if any.
    pub fn attempted(&self) -> Option<Processor> {
        match self.first_processor {
            1 => Some(Processor::Default),
            2 => Some(Processor::Fallback),
            _ => None,
        }
    }
}

/// Capacities of a region; all must match between the creator and every attacher.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegionConfig {
    /// Payment ring slots (a power of two, at least 2).
    pub ring_capacity: u32,
    /// Stats-log records (a multiple of 1024).
    pub log_capacity: u32,
    /// Process-table entries (at most 64).
    pub max_members: u32,
    /// In-flight slots of each member (at most 65,536).
    pub inflight_per_member: u32,
    /// Entries of the correlationId set.
    pub id_capacity: u32,
}

impl Default for RegionConfig {
    fn default() -> Self {
        RegionConfig {
            ring_capacity: 131_072,
            log_capacity: 1_048_576,
            max_members: 32,
            inflight_per_member: 4096,
            id_capacity: 524_288,
        }
    }
}

/// What can go wrong opening a region; every message names the file.
#[derive(Debug)]
pub enum ShmError {
    /// An I/O error on the file.
    Io(PathBuf, io::Error),
    /// The file exists but is not a region of this layout (or not ours at all).
    Invalid(PathBuf, String),
    /// The configuration asked for is impossible.
    Config(String),
    /// Every process-table entry is held by a live process.
    NoFreeMember(PathBuf),
}

impl std::fmt::Display for ShmError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShmError::Io(p, e) => write!(f, "shared file {}: {e}", p.display()),
            ShmError::Invalid(p, why) => write!(f, "shared file {}: {why}", p.display()),
            ShmError::Config(why) => write!(f, "shared region configuration: {why}"),
            ShmError::NoFreeMember(p) => write!(
                f,
                "shared file {}: all process-table entries are held by live processes",
                p.display()
            ),
        }
    }
}

impl std::error::Error for ShmError {}

/// The header page (first 4096 bytes; these fields at its start).
#[repr(C)]
pub struct Header {
    /// [`MAGIC`], written last at creation (Release), read first (Acquire).
    pub magic: AtomicU64,
    /// [`LAYOUT_VERSION`] in the low 32 bits.
    pub version: AtomicU64,
    /// Total file size in bytes.
    pub file_size: AtomicU64,
    /// Ring slots.
    pub ring_capacity: AtomicU64,
    /// Log records.
    pub log_capacity: AtomicU64,
    /// Process-table entries.
    pub max_members: AtomicU64,
    /// In-flight slots per member.
    pub inflight_per_member: AtomicU64,
    /// Id-set entries.
    pub id_capacity: AtomicU64,
    /// Purge generation: bumped by every purge (AcqRel), read by pushers and consumers.
    pub generation: AtomicU64,
    /// Creation time, ms since the epoch (informational).
    pub created_ms: AtomicU64,
}
// SAFETY: only atomics.
unsafe impl Shared for Header {}

/// Byte offsets of each section, computed from a [`RegionConfig`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// Process table.
    pub members: usize,
    /// Health board.
    pub health: usize,
    /// Ring control block.
    pub ring_ctl: usize,
    /// Ring slots.
    pub ring_slots: usize,
    /// In-flight tables.
    pub inflight: usize,
    /// Log control block.
    pub log_ctl: usize,
    /// Log chunk headers.
    pub log_chunks: usize,
    /// Log records.
    pub log_records: usize,
    /// Id-set generation word (one 64-byte line).
    pub ids_ctl: usize,
    /// Id-set entries.
    pub ids: usize,
    /// Total size.
    pub size: usize,
}

fn round_up(x: usize, to: usize) -> usize {
    x.div_ceil(to) * to
}

impl Layout {
    /// The layout for `cfg`, after validating it.
    pub fn of(cfg: &RegionConfig) -> Result<Layout, ShmError> {
        let bad = |why: String| Err(ShmError::Config(why));
        if !cfg.ring_capacity.is_power_of_two() || cfg.ring_capacity < 2 {
            return bad(format!(
                "ring_capacity {} is not a power of two >= 2",
                cfg.ring_capacity
            ));
        }
        if cfg.log_capacity == 0 || !cfg.log_capacity.is_multiple_of(stats_log::CHUNK as u32) {
            return bad(format!(
                "log_capacity {} is not a positive multiple of {}",
                cfg.log_capacity,
                stats_log::CHUNK
            ));
        }
        if cfg.max_members == 0 || cfg.max_members > ring::MAX_MEMBERS {
            return bad(format!(
                "max_members {} is not in 1..={}",
                cfg.max_members,
                ring::MAX_MEMBERS
            ));
        }
        if cfg.inflight_per_member == 0 || cfg.inflight_per_member > 65_536 {
            return bad(format!(
                "inflight_per_member {} is not in 1..=65536",
                cfg.inflight_per_member
            ));
        }
        if cfg.id_capacity == 0 {
            return bad("id_capacity is 0".into());
        }
        let line = 128; // CachePadded is 128-byte aligned on x86_64
        let mut at = HEADER_SIZE;
        let mut take = |bytes: usize| {
            let here = at;
            at = round_up(at + bytes, line);
            here
        };
        let members = take(cfg.max_members as usize * MEMBER_ENTRY_SIZE);
        let health = take(std::mem::size_of::<health::BoardRaw>());
        let ring_ctl = take(std::mem::size_of::<ring::RingCtl>());
        let ring_slots = take(cfg.ring_capacity as usize * std::mem::size_of::<ring::Slot>());
        let inflight = take(
            cfg.max_members as usize
                * cfg.inflight_per_member as usize
                * std::mem::size_of::<member::InFlightSlot>(),
        );
        let log_ctl = take(std::mem::size_of::<stats_log::LogCtl>());
        let log_chunks = take(
            cfg.log_capacity as usize / stats_log::CHUNK
                * std::mem::size_of::<stats_log::ChunkHeader>(),
        );
        let log_records =
            take(cfg.log_capacity as usize * std::mem::size_of::<stats_log::Record>());
        let ids_ctl = take(line);
        let ids = take(cfg.id_capacity as usize * std::mem::size_of::<ids::IdEntry>());
        let size = round_up(at, 4096);
        Ok(Layout {
            members,
            health,
            ring_ctl,
            ring_slots,
            inflight,
            log_ctl,
            log_chunks,
            log_records,
            ids_ctl,
            ids,
            size,
        })
    }
}

/// An attached region. Share it with `Arc`.
pub struct Region {
    path: PathBuf,
    file: File,
    map: Mapping,
    cfg: RegionConfig,
    layout: Layout,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

impl Region {
    /// Creates the region at `path` with `cfg`, or attaches the one already there (which must
    /// have exactly `cfg`'s capacities).
    pub fn open(path: &Path, cfg: &RegionConfig) -> Result<Region, ShmError> {
        let layout = Layout::of(cfg)?;
        loop {
            match OpenOptions::new().read(true).write(true).open(path) {
                Ok(file) => return Self::attach_file(path, file, Some(cfg)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(ShmError::Io(path.to_path_buf(), e)),
            }
            if Self::create(path, cfg, &layout)? {
                continue; // created and linked into place (or lost the race): attach it
            }
        }
    }

    /// Attaches an existing region with whatever capacities it was created with.
    pub fn attach(path: &Path) -> Result<Region, ShmError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(|e| ShmError::Io(path.to_path_buf(), e))?;
        Self::attach_file(path, file, None)
    }

    /// Builds a fresh region under a temporary name and hard-links it to `path`.
    /// Returns Ok(true) when `path` now exists (ours or a racing creator's).
    fn create(path: &Path, cfg: &RegionConfig, layout: &Layout) -> Result<bool, ShmError> {
        let io_err = |e| ShmError::Io(path.to_path_buf(), e);
        let dir = path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        // pid alone is not unique across containers (each has its own pid 1).
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let tmp = dir.join(format!(".{name}.init-{}-{nanos}-{seq}", std::process::id()));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err)?;
        let cleanup = |e: ShmError| {
            let _ = std::fs::remove_file(&tmp);
            e
        };
        let free = sys::free_bytes(&file).map_err(|e| cleanup(io_err(e)))?;
        if free < layout.size as u64 {
            return Err(cleanup(ShmError::Invalid(
                path.to_path_buf(),
                format!(
                    "cannot create: {} bytes needed but only {free} free on its file system (tmpfs full or too small?)",
                    layout.size
                ),
            )));
        }
        file.set_len(layout.size as u64)
            .map_err(|e| cleanup(io_err(e)))?;
        let map = Mapping::new(&file).map_err(|e| cleanup(io_err(e)))?;
        let h: &Header = map.at(0);
        let set = |a: &AtomicU64, v: u64| a.store(v, Ordering::Relaxed);
        set(&h.version, LAYOUT_VERSION as u64);
        set(&h.file_size, layout.size as u64);
        set(&h.ring_capacity, cfg.ring_capacity as u64);
        set(&h.log_capacity, cfg.log_capacity as u64);
        set(&h.max_members, cfg.max_members as u64);
        set(&h.inflight_per_member, cfg.inflight_per_member as u64);
        set(&h.id_capacity, cfg.id_capacity as u64);
        set(&h.generation, 1);
        set(&h.created_ms, now_ms() as u64);
        ring::init(&map, layout, cfg);
        map.at::<AtomicU64>(layout.ids_ctl)
            .store(1, Ordering::Relaxed);
        // Release: every initialising store above happens-before an attacher's Acquire load
        // of the magic (and the link below publishes the file only after this anyway).
        h.magic.store(MAGIC, Ordering::Release);
        drop(map);
        let linked = std::fs::hard_link(&tmp, path);
        let _ = std::fs::remove_file(&tmp);
        match linked {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(true),
            Err(e) => Err(io_err(e)),
        }
    }

    fn attach_file(
        path: &Path,
        file: File,
        want: Option<&RegionConfig>,
    ) -> Result<Region, ShmError> {
        let invalid = |why: String| ShmError::Invalid(path.to_path_buf(), why);
        let len = file
            .metadata()
            .map_err(|e| ShmError::Io(path.to_path_buf(), e))?
            .len();
        if len < HEADER_SIZE as u64 {
            return Err(invalid(format!(
                "truncated or not a rinha region: {len} bytes, smaller than the {HEADER_SIZE}-byte header"
            )));
        }
        let map = Mapping::new(&file).map_err(|e| ShmError::Io(path.to_path_buf(), e))?;
        let h: &Header = map.at(0);
        let magic = h.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(invalid(format!(
                "wrong magic {magic:#018x} (expected {MAGIC:#018x}): not a rinha region, refusing to touch it"
            )));
        }
        let version = h.version.load(Ordering::Relaxed);
        if version != LAYOUT_VERSION as u64 {
            return Err(invalid(format!(
                "layout version {version}, this program uses {LAYOUT_VERSION}: stop the engine that uses it and remove the file"
            )));
        }
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let to_u32 = |v: u64, what: &str| {
            u32::try_from(v)
                .map_err(|_| invalid(format!("{what} {v} in the header is out of range")))
        };
        let cfg = RegionConfig {
            ring_capacity: to_u32(get(&h.ring_capacity), "ring capacity")?,
            log_capacity: to_u32(get(&h.log_capacity), "log capacity")?,
            max_members: to_u32(get(&h.max_members), "member count")?,
            inflight_per_member: to_u32(get(&h.inflight_per_member), "in-flight capacity")?,
            id_capacity: to_u32(get(&h.id_capacity), "id capacity")?,
        };
        let layout =
            Layout::of(&cfg).map_err(|e| invalid(format!("header capacities are invalid: {e}")))?;
        let recorded = get(&h.file_size);
        if recorded != layout.size as u64 || len != layout.size as u64 {
            return Err(invalid(format!(
                "size {len} bytes, header says {recorded}, capacities need {}: truncated or resized",
                layout.size
            )));
        }
        if let Some(want) = want {
            if *want != cfg {
                return Err(invalid(format!(
                    "capacities differ: the file has {cfg:?}, this process asks for {want:?}"
                )));
            }
        }
        Ok(Region {
            path: path.to_path_buf(),
            file,
            map,
            cfg,
            layout,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The capacities.
    pub fn config(&self) -> &RegionConfig {
        &self.cfg
    }

    /// The byte layout.
    pub fn layout(&self) -> &Layout {
        &self.layout
    }

    pub(crate) fn mapping(&self) -> &Mapping {
        &self.map
    }

    pub(crate) fn file(&self) -> &File {
        &self.file
    }

    fn header(&self) -> &Header {
        self.map.at(0)
    }

    /// Current purge generation.
    pub fn generation(&self) -> u32 {
        self.header().generation.load(Ordering::Acquire) as u32
    }

    /// The payment ring.
    pub fn ring(&self) -> Ring<'_> {
        Ring::new(self)
    }

    /// The stats log.
    pub fn stats(&self) -> StatsLog<'_> {
        StatsLog::new(self)
    }

    /// The health board.
    pub fn health(&self) -> HealthBoard<'_> {
        HealthBoard::new(self)
    }

    /// The set of correlationIds accepted since the last purge.
    pub fn ids(&self) -> ids::IdSet<'_> {
        ids::IdSet::new(
            self.map
                .section(self.layout.ids, self.cfg.id_capacity as usize),
            self.map.at(self.layout.ids_ctl),
        )
    }

    /// Takes a process-table entry for this process; see [`Member`].
    pub fn join(self: &Arc<Self>, role: Role) -> Result<Member, ShmError> {
        Member::join(Arc::clone(self), role)
    }

    /// Empties the ring, the log and the id set for every process (see shm-layout.md,
    /// "Purge"): bumps the generation (queued and in-flight payments of older generations
    /// are dropped by the consumers that meet them) and moves the log's floor to its head.
    pub fn purge(&self) {
        // AcqRel: pushes and completions that load the new generation see the new floor.
        self.stats().purge();
        self.header().generation.fetch_add(1, Ordering::AcqRel);
        self.ids().clear();
    }

    /// Whether the process-table entry `index` is held by a live process other than us.
    pub(crate) fn member_alive(&self, index: u32) -> bool {
        let start = (self.layout.members + index as usize * MEMBER_ENTRY_SIZE) as u64;
        // An error probing is treated as alive: never recover something that may be running.
        sys::range_locked_by_other(&self.file, start, MEMBER_ENTRY_SIZE as u64).unwrap_or(true)
    }

    pub(crate) fn member_lock_range(&self, index: u32) -> (u64, u64) {
        (
            (self.layout.members + index as usize * MEMBER_ENTRY_SIZE) as u64,
            MEMBER_ENTRY_SIZE as u64,
        )
    }
}

/// A correlationId as two little-endian words (how the ring, the log and the id set store it).
pub(crate) fn id_words(id: &[u8; 16]) -> (u64, u64) {
    let mut lo = [0u8; 8];
    let mut hi = [0u8; 8];
    lo.copy_from_slice(&id[..8]);
    hi.copy_from_slice(&id[8..]);
    (u64::from_le_bytes(lo), u64::from_le_bytes(hi))
}

/// Inverse of [`id_words`].
pub(crate) fn id_from_words(lo: u64, hi: u64) -> [u8; 16] {
    let mut id = [0u8; 16];
    id[..8].copy_from_slice(&lo.to_le_bytes());
    id[8..].copy_from_slice(&hi.to_le_bytes());
    id
}

/// Milliseconds since the epoch (the clock every record uses).
pub fn unix_ms() -> i64 {
    now_ms()
}
