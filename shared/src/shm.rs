//! Shared memory between the supervisor and its workers: a memfd of a
//! fixed size, mapped whole and seen as native-endian `AtomicU64` words
//! (the fleet's rate-limit table, the fleet-state page).
//!
//! Both sides use this one module. The supervisor [`create`]s a file,
//! sealed at once against shrinking and growing: whoever holds a
//! descriptor cannot `ftruncate` it, which would make every access past
//! the new end a `SIGBUS` in every process that maps it. A file only the
//! supervisor may write ([`create_read_only_shared`]) is also sealed
//! against new writes, and handed out through a read-only descriptor.
//!
//! A worker [`inherited`] the descriptor whose number an environment
//! variable names, and takes ownership of it only once it is known to be
//! such a file: a stale or bogus number (`1`, a pipe, a socket) is refused
//! and left open, never closed under its real owner.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};

/// The seals every file made by [`create`] has: its size is fixed.
pub const SIZE_SEALS: libc::c_int = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;

/// Creates an anonymous shared-memory file (memfd, close-on-exec) of
/// `len` zero bytes, sealed against shrinking and growing. More seals may
/// still be added ([`seal`]); add `F_SEAL_SEAL` once done.
pub fn create(name: &CStr, len: u64) -> io::Result<OwnedFd> {
    let size = libc::off_t::try_from(len).map_err(|_| io::Error::other("size too large"))?;
    // SAFETY: memfd_create takes a NUL-terminated name and flags; it
    // returns a new descriptor (or -1).
    let fd =
        unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: ftruncate on a descriptor we own; no memory effects.
    if unsafe { libc::ftruncate(fd.as_raw_fd(), size) } != 0 {
        return Err(io::Error::last_os_error());
    }
    seal(fd_ref(&fd), SIZE_SEALS)?;
    Ok(fd)
}

/// Adds `seals` (`F_SEAL_*`) to a file made by [`create`].
pub fn seal(fd: BorrowedFd<'_>, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor borrowed for the call; no memory effects.
    if unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The seals of `fd` (`EINVAL`: not a memfd, or not sealable).
fn seals(fd: RawFd) -> io::Result<libc::c_int> {
    // SAFETY: fcntl on an integer descriptor has no memory effects (EBADF
    // when it is not open).
    let seals = unsafe { libc::fcntl(fd, libc::F_GET_SEALS) };
    if seals < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(seals)
}

/// A second, read-only descriptor of the same file (opened through
/// `/proc/self/fd`, close-on-exec): what to pass to a process that must
/// only read it. Such a descriptor can neither write nor map writable.
pub fn reopen_read_only(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let file = std::fs::File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    Ok(file.into())
}

/// Creates a file of `len` zero bytes that only the caller writes: the
/// caller's read-write mapping of it, and a read-only descriptor to hand
/// to readers. Besides its size, the file is sealed against new writes
/// (`F_SEAL_FUTURE_WRITE`, Linux 5.1; an older kernel leaves that seal
/// out): even a reader that reopens its descriptor read-write through
/// `/proc` cannot write or map it writable. The caller's mapping, made
/// before the seal, writes on; no read-write descriptor is kept.
pub fn create_read_only_shared(name: &CStr, len: u64) -> io::Result<(SharedWords, OwnedFd)> {
    let fd = create(name, len)?;
    let words = SharedWords::map(fd_ref(&fd), len)?;
    let reader = reopen_read_only(fd_ref(&fd))?;
    match seal(fd_ref(&fd), libc::F_SEAL_FUTURE_WRITE | libc::F_SEAL_SEAL) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => seal(fd_ref(&fd), libc::F_SEAL_SEAL)?,
        other => other?,
    }
    Ok((words, reader))
}

fn fd_ref(fd: &OwnedFd) -> BorrowedFd<'_> {
    std::os::fd::AsFd::as_fd(fd)
}

/// Checks, without taking it, that descriptor `fd` is a file made by
/// [`create`] of exactly `len` bytes: open, not one of stdin, stdout or
/// stderr, a regular file (a memfd is one), sealed against shrinking and
/// growing (so mapping it can never `SIGBUS`), and of that size.
pub fn check(fd: RawFd, len: u64) -> io::Result<()> {
    if fd <= libc::STDERR_FILENO {
        return Err(io::Error::other(format!(
            "descriptor {fd} is a standard stream"
        )));
    }
    // SAFETY: fstat writes one `stat` into the local we pass; on an
    // integer descriptor it has no other effect (EBADF when not open).
    let st = unsafe {
        let mut st: libc::stat = std::mem::zeroed();
        if libc::fstat(fd, &mut st) != 0 {
            return Err(io::Error::last_os_error());
        }
        st
    };
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(io::Error::other(format!(
            "descriptor {fd} is not a shared-memory file"
        )));
    }
    let sealed = seals(fd).map_err(|e| {
        io::Error::other(format!("descriptor {fd} is not a shared-memory file: {e}"))
    })?;
    if sealed & SIZE_SEALS != SIZE_SEALS {
        return Err(io::Error::other(format!(
            "descriptor {fd}: its size is not sealed"
        )));
    }
    if u64::try_from(st.st_size).ok() != Some(len) {
        return Err(io::Error::other(format!(
            "descriptor {fd} has {} bytes, not {len}",
            st.st_size
        )));
    }
    Ok(())
}

/// Takes the descriptor whose number `value` is (an environment
/// variable's value), once [`check`] accepts it; marks it close-on-exec.
/// A refused descriptor is left as it was.
pub fn take(value: &str, len: u64) -> io::Result<OwnedFd> {
    let fd: RawFd = value
        .trim()
        .parse()
        .map_err(|_| io::Error::other(format!("{value:?} is not a descriptor number")))?;
    check(fd, len)?;
    // SAFETY: `fd` is open (fstat succeeded) and is the shared-memory file
    // the supervisor passed to this process alone, taken once, here.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    // SAFETY: fcntl on a descriptor we own; no memory effects.
    unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, libc::FD_CLOEXEC) };
    Ok(fd)
}

/// [`take`] of the descriptor named by the environment variable `var`;
/// `None` when it is not set.
pub fn inherited(var: &str, len: u64) -> Option<io::Result<OwnedFd>> {
    let value = std::env::var(var).ok()?;
    Some(take(&value, len))
}

/// A shared mapping of the first `words` words of a file; unmapped on drop.
struct Mapping {
    ptr: NonNull<AtomicU64>,
    words: usize,
}

// SAFETY: the mapping is only ever accessed through `AtomicU64`s, which are
// safe to share between threads (and processes).
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn new(fd: BorrowedFd<'_>, len: u64, prot: libc::c_int) -> io::Result<Mapping> {
        let words = usize::try_from(len / 8).map_err(|_| io::Error::other("size too large"))?;
        if words == 0 {
            return Err(io::Error::other("nothing to map"));
        }
        // SAFETY: fstat writes one `stat` into the local we pass.
        let size = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(fd.as_raw_fd(), &mut st) != 0 {
                return Err(io::Error::last_os_error());
            }
            st.st_size
        };
        // Every mapped word must be in the file: past its end is SIGBUS.
        if u64::try_from(size).unwrap_or(0) < words as u64 * 8 {
            return Err(io::Error::other(format!(
                "the file has {size} bytes, fewer than {len}"
            )));
        }
        // SAFETY: a fresh shared mapping of `words * 8` bytes of a file at
        // least that long; the kernel picks the (page-aligned, so aligned
        // for AtomicU64) address. It stays valid until `Drop` unmaps it and
        // is only accessed as atomics.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                words * 8,
                prot,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(ptr.cast()).ok_or_else(|| io::Error::other("mapped at null"))?;
        Ok(Mapping { ptr, words })
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` maps `words` aligned u64s for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.words) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `new` mapped; no borrow of
        // `words()` outlives `self`.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.words * 8);
        }
    }
}

/// A read-write shared mapping of a whole file, as atomic words. The
/// mapping keeps the memory alive on its own: the descriptor may be
/// closed once mapped (one more left for connections).
pub struct SharedWords(Mapping);

impl SharedWords {
    /// Maps the first `len` bytes of `fd` (a file at least that long,
    /// opened read-write) shared and read-write.
    pub fn map(fd: BorrowedFd<'_>, len: u64) -> io::Result<SharedWords> {
        Mapping::new(fd, len, libc::PROT_READ | libc::PROT_WRITE).map(SharedWords)
    }

    /// The mapped words.
    pub fn words(&self) -> &[AtomicU64] {
        self.0.words()
    }
}

/// A read-only shared mapping of a whole file, as atomic words: they can
/// only be loaded (a store would fault).
pub struct ReadOnlyWords(Mapping);

impl ReadOnlyWords {
    /// Maps the first `len` bytes of `fd` (a file at least that long)
    /// shared and read-only.
    pub fn map(fd: BorrowedFd<'_>, len: u64) -> io::Result<ReadOnlyWords> {
        Mapping::new(fd, len, libc::PROT_READ).map(ReadOnlyWords)
    }

    /// How many words are mapped.
    pub fn len(&self) -> usize {
        self.0.words
    }

    /// Whether nothing is mapped (never: [`ReadOnlyWords::map`] refuses).
    pub fn is_empty(&self) -> bool {
        self.0.words == 0
    }

    /// Word `i` (`Acquire`); `None` past the end.
    pub fn load(&self, i: usize) -> Option<u64> {
        self.0.words().get(i).map(|w| w.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    const LEN: u64 = 4096;

    fn is_open(fd: RawFd) -> bool {
        // SAFETY: fcntl on an integer descriptor has no memory effects.
        unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
    }

    #[test]
    fn a_created_file_is_taken_and_shared() {
        let fd = create(c"heartalk-test", LEN).unwrap();
        // What the worker does with the number it inherited (a dup here).
        let dup = fd.try_clone().unwrap();
        let raw = dup.as_raw_fd();
        std::mem::forget(dup);
        let taken = take(&format!(" {raw}\n"), LEN).unwrap();
        let a = SharedWords::map(fd.as_fd(), LEN).unwrap();
        let b = SharedWords::map(taken.as_fd(), LEN).unwrap();
        drop(taken);
        assert_eq!(a.words().len() as u64, LEN / 8);
        a.words()[7].store(42, Ordering::Release);
        assert_eq!(b.words()[7].load(Ordering::Acquire), 42);
    }

    #[test]
    fn a_bogus_descriptor_is_refused_and_stays_open() {
        let (rx, tx) = {
            let mut fds = [0; 2];
            // SAFETY: pipe2 writes two descriptors into the array we pass.
            assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
            // SAFETY: both are fresh descriptors nobody else owns.
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
        };
        for fd in [&rx, &tx] {
            let raw = fd.as_raw_fd();
            let e = take(&raw.to_string(), LEN).unwrap_err();
            assert!(e.to_string().contains("not a shared-memory file"), "{e}");
            assert!(is_open(raw), "a refused descriptor must stay open");
        }
        // Still the pipe it was: what goes in comes out.
        let mut tx = std::fs::File::from(tx);
        let mut rx = std::fs::File::from(rx);
        use std::io::{Read, Write};
        tx.write_all(b"x").unwrap();
        let mut b = [0u8; 1];
        rx.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"x");

        // A stale number naming stdout is never taken (nor closed).
        assert!(take("1", LEN).is_err());
        assert!(is_open(1));
        // Not a number, not open.
        assert!(take("fd", LEN).is_err());
        assert!(take("999999", LEN).is_err());
    }

    #[test]
    fn a_memfd_of_another_size_or_unsealed_is_refused() {
        let small = create(c"heartalk-test", LEN / 2).unwrap();
        let e = check(small.as_raw_fd(), LEN).unwrap_err();
        assert!(e.to_string().contains("not 4096"), "{e}");
        assert!(is_open(small.as_raw_fd()));
        // A memfd whose size anyone may change: mapping it could SIGBUS.
        // SAFETY: memfd_create with a static name, ftruncate on its result.
        let loose = unsafe {
            let fd = OwnedFd::from_raw_fd(libc::memfd_create(c"loose".as_ptr(), libc::MFD_CLOEXEC));
            assert_eq!(libc::ftruncate(fd.as_raw_fd(), LEN as libc::off_t), 0);
            fd
        };
        let e = check(loose.as_raw_fd(), LEN).unwrap_err();
        assert!(e.to_string().contains("not sealed"), "{e}");
    }

    #[test]
    fn the_size_is_sealed() {
        let fd = create(c"heartalk-test", LEN).unwrap();
        // SAFETY: ftruncate on a descriptor we own.
        let shrink = unsafe { libc::ftruncate(fd.as_raw_fd(), 0) };
        assert_eq!(shrink, -1);
        assert_eq!(io::Error::last_os_error().raw_os_error(), Some(libc::EPERM));
        // SAFETY: as above.
        let grow = unsafe { libc::ftruncate(fd.as_raw_fd(), 2 * LEN as libc::off_t) };
        assert_eq!(grow, -1);
    }

    #[test]
    fn a_read_only_shared_file_is_written_by_its_creator_only() {
        let (writer, reader) = create_read_only_shared(c"heartalk-test", LEN).unwrap();
        check(reader.as_raw_fd(), LEN).unwrap();
        let page = ReadOnlyWords::map(reader.as_fd(), LEN).unwrap();
        assert_eq!(page.len() as u64, LEN / 8);
        assert_eq!(page.load(3), Some(0));
        writer.words()[3].store(5, Ordering::Release);
        assert_eq!(page.load(3), Some(5));
        assert_eq!(page.load(page.len()), None);

        // The reader's descriptor cannot map writable, write or resize.
        assert!(SharedWords::map(reader.as_fd(), LEN).is_err());
        // SAFETY: write/ftruncate of a local byte on a descriptor we own.
        unsafe {
            assert_eq!(libc::write(reader.as_raw_fd(), b"x".as_ptr().cast(), 1), -1);
            assert_eq!(libc::ftruncate(reader.as_raw_fd(), 0), -1);
        }
        // Nor can a read-write descriptor reopened through /proc: the file
        // is sealed against writes (Linux 5.1 and later).
        let path = format!("/proc/self/fd/{}", reader.as_raw_fd());
        if let Ok(rw) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
        {
            let rw = OwnedFd::from(rw);
            if seals(rw.as_raw_fd()).unwrap() & libc::F_SEAL_FUTURE_WRITE != 0 {
                assert!(SharedWords::map(rw.as_fd(), LEN).is_err());
                // SAFETY: as above.
                assert_eq!(
                    unsafe { libc::write(rw.as_raw_fd(), b"x".as_ptr().cast(), 1) },
                    -1
                );
            }
            // SAFETY: as above.
            assert_eq!(unsafe { libc::ftruncate(rw.as_raw_fd(), 0) }, -1);
        }
        // And no more seals may be added (nor removed: seals never are).
        assert!(seal(reader.as_fd(), libc::F_SEAL_WRITE).is_err());
        // The creator's mapping writes on.
        writer.words()[3].store(6, Ordering::Release);
        assert_eq!(page.load(3), Some(6));
    }
}
