//! The operating-system edge of the shared file: the mapping, typed views into it, the
//! futex and the OFD byte-range locks. Every `unsafe` block of the shared-memory core is
//! here; the other shm modules only declare, with `unsafe impl Shared` and a SAFETY line, that
//! their structs in the file are made of atomics.
//!
//! Contract: [`Mapping::section`] hands out `&[T]` for `T: Shared` (types made only of
//! atomics, valid for every bit pattern including all zeroes) at aligned offsets inside the
//! mapping; the slices live as long as the mapping. Nothing here knows the layout.
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::sync::atomic::AtomicU32;
use std::time::Duration;

use memmap2::MmapRaw;

/// Marker for the `#[repr(C)]` structs that live in the shared file.
///
/// # Safety
/// Implementors must be made only of atomics (or arrays/structs of them), so that any bit
/// pattern, all zeroes included, is a valid value, shared `&T` access from many threads and
/// processes is sound, and their alignment is at most 128 (`CachePadded` on x86_64; the layout
/// places every section at a multiple of 128 and [`Mapping::section`] checks it).
pub unsafe trait Shared: Sized {}

/// A shared, writable mapping of the whole file.
pub struct Mapping {
    map: MmapRaw,
}

impl Mapping {
    /// Maps all of `file` (read + write, `MAP_SHARED`).
    pub fn new(file: &File) -> io::Result<Mapping> {
        Ok(Mapping {
            map: MmapRaw::map_raw(file)?,
        })
    }

    /// A slice of `count` values of `T` at byte `offset`.
    ///
    /// Panics if the range is outside the mapping or misaligned: the layout is computed and
    /// validated at open time, so this is a programming error, not bad input.
    pub fn section<T: Shared>(&self, offset: usize, count: usize) -> &[T] {
        let size = std::mem::size_of::<T>()
            .checked_mul(count)
            .and_then(|b| b.checked_add(offset));
        assert!(
            size.is_some_and(|end| end <= self.map.len()),
            "shm section out of the mapping"
        );
        let ptr = self.map.as_ptr().wrapping_add(offset);
        assert_eq!(
            ptr as usize % std::mem::align_of::<T>(),
            0,
            "misaligned shm section"
        );
        // SAFETY: the range [offset, offset + count * size_of::<T>()) was checked to lie inside
        // the mapping, which stays mapped for the lifetime of `&self`; the pointer is aligned
        // for T (checked above; mappings are page aligned); `T: Shared` guarantees that every
        // bit pattern is a valid T and that shared references from any number of threads and
        // processes are sound (atomics only), so no other process's writes can make it invalid.
        unsafe { std::slice::from_raw_parts(ptr.cast::<T>(), count) }
    }

    /// One value of `T` at byte `offset` (see [`Mapping::section`]).
    pub fn at<T: Shared>(&self, offset: usize) -> &T {
        &self.section::<T>(offset, 1)[0]
    }
}

/// Blocks while `*word == expected`, for at most `timeout`, on a futex shared between
/// processes (no `FUTEX_PRIVATE_FLAG`: the word lives in a `MAP_SHARED` file mapping).
/// Spurious returns are allowed; callers re-check their condition.
pub fn futex_wait(word: &AtomicU32, expected: u32, timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: t.subsec_nanos() as libc::c_long,
    });
    let ts_ptr = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: `word` is a valid, aligned 4-byte atomic for the duration of the call; the kernel
    // only reads it; `ts_ptr` is null or points to a live timespec on this stack frame.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            ts_ptr,
        );
    }
}

/// Wakes up to `n` waiters parked on `word` by [`futex_wait`] in any process.
pub fn futex_wake(word: &AtomicU32, n: i32) {
    // SAFETY: `word` is a valid, aligned 4-byte atomic; FUTEX_WAKE does not access memory
    // beyond the address used as the futex key.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, n);
    }
}

fn ofd_lock(
    file: &File,
    cmd: libc::c_int,
    start: u64,
    len: u64,
    kind: libc::c_short,
) -> io::Result<libc::flock> {
    // SAFETY: flock is a plain C struct for which all-zeroes is a valid value.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = start as libc::off_t;
    fl.l_len = len as libc::off_t;
    fl.l_pid = 0; // required by OFD locks
                  // SAFETY: the fd is open for the lifetime of `file`; `fl` is a valid flock the kernel may
                  // read and (for F_OFD_GETLK) write.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), cmd, &mut fl as *mut libc::flock) };
    if r == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(fl)
    }
}

/// Tries to take an exclusive OFD lock on `[start, start+len)` of `file` without blocking.
/// Held until [`unlock_range`] or until the last descriptor of this open file description
/// closes, which the kernel does when the process dies (SIGKILL included).
pub fn try_lock_range(file: &File, start: u64, len: u64) -> io::Result<bool> {
    match ofd_lock(
        file,
        libc::F_OFD_SETLK,
        start,
        len,
        libc::F_WRLCK as libc::c_short,
    ) {
        Ok(_) => Ok(true),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => Ok(false),
        Err(e) => Err(e),
    }
}

/// A new open file description of the same file as `file` (read-write), via
/// `/proc/self/fd`: works even when the file was renamed or unlinked since it was opened.
/// Each one owns its OFD locks separately.
pub fn reopen(file: &File) -> io::Result<File> {
    use std::os::fd::AsRawFd;
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Releases a lock taken by [`try_lock_range`].
pub fn unlock_range(file: &File, start: u64, len: u64) -> io::Result<()> {
    ofd_lock(
        file,
        libc::F_OFD_SETLK,
        start,
        len,
        libc::F_UNLCK as libc::c_short,
    )
    .map(|_| ())
}

/// Whether another open file description (another process, in any container) holds a lock
/// on `[start, start+len)`. Locks held through `file` itself never count.
pub fn range_locked_by_other(file: &File, start: u64, len: u64) -> io::Result<bool> {
    let fl = ofd_lock(
        file,
        libc::F_OFD_GETLK,
        start,
        len,
        libc::F_WRLCK as libc::c_short,
    )?;
    Ok(fl.l_type != libc::F_UNLCK as libc::c_short)
}

/// Free bytes on the file system that holds `file` (for a clear "tmpfs full" error at
/// creation; pages are not reserved up front so that only touched pages cost memory).
pub fn free_bytes(file: &File) -> io::Result<u64> {
    let st = nix::sys::statvfs::fstatvfs(file).map_err(io::Error::from)?;
    Ok(st.blocks_available() as u64 * st.fragment_size() as u64)
}

// SAFETY: an atomic is valid for every bit pattern and made for shared access.
unsafe impl Shared for std::sync::atomic::AtomicU64 {}
// SAFETY: as above.
unsafe impl Shared for AtomicU32 {}
// SAFETY: IdEntry is #[repr(C)] and made only of AtomicU64.
unsafe impl Shared for super::ids::IdEntry {}
