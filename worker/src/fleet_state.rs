//! The supervisor's fleet-state page, read-only: how many slots of the
//! fleet are currently not serving (degraded or hung). `/ready` answers
//! 503 while that is above zero, so a load balancer steers away from the
//! whole container: the degraded worker itself cannot accept the probe.
//!
//! The supervisor creates the page (a memfd of
//! `shared::activation::FLEET_STATE_BYTES`) once and passes it to every
//! worker as `HEARTALK_FLEET_FD`; the layout is
//! `shared::activation::fleet_state`. A worker running without it (alone,
//! or under an older supervisor) answers for itself only.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use shared::activation::{FLEET_STATE_BYTES, env, fleet_state};

/// The page, mapped read-only.
pub struct FleetState {
    ptr: *const AtomicU64,
    words: usize,
}

// SAFETY: the mapping is only ever read through `AtomicU64`s, which are
// safe to share between threads (and processes).
unsafe impl Send for FleetState {}
// SAFETY: as above.
unsafe impl Sync for FleetState {}

impl FleetState {
    /// Maps the page named by `HEARTALK_FLEET_FD`, if the supervisor passed
    /// one. A page that cannot be mapped is logged and means "answer for
    /// this worker only".
    pub fn from_env() -> Option<FleetState> {
        let fd: i32 = std::env::var(env::HEARTALK_FLEET_FD)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        // SAFETY: the supervisor passed this descriptor for us alone; it is
        // taken once, here (start-up reads the variable once).
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        match FleetState::map(fd) {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "HEARTALK_FLEET_FD unusable; /ready answers for this worker only");
                None
            }
        }
    }

    /// Maps a fleet-state file read-only. The descriptor is closed once
    /// mapped: the mapping keeps the memory alive and needs no descriptor,
    /// which leaves one more for connections.
    pub fn map(fd: OwnedFd) -> std::io::Result<FleetState> {
        let raw = fd.as_raw_fd();
        // SAFETY: plain fstat on a descriptor we own.
        let len = unsafe {
            let mut st: libc::stat = std::mem::zeroed();
            if libc::fstat(raw, &mut st) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            st.st_size as u64
        };
        let words = (len.min(FLEET_STATE_BYTES) / 8) as usize;
        // Every word this worker reads must be in the file.
        if words < fleet_state::NOT_SERVING + 1 {
            return Err(std::io::Error::other("fleet-state page is too small"));
        }
        // SAFETY: a fresh shared read-only mapping of `words * 8` bytes of
        // the file; it stays valid until `Drop` unmaps it and is only read
        // as atomics (the address is page-aligned).
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                words * 8,
                libc::PROT_READ,
                libc::MAP_SHARED,
                raw,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        drop(fd);
        Ok(FleetState {
            ptr: ptr.cast(),
            words,
        })
    }

    fn words(&self) -> &[AtomicU64] {
        // SAFETY: `ptr` maps `words` u64s for the life of `self`; atomics
        // only load from it here (the mapping is read-only).
        unsafe { std::slice::from_raw_parts(self.ptr, self.words) }
    }

    /// How many slots of the fleet are currently not serving.
    pub fn not_serving(&self) -> u64 {
        self.words()[fleet_state::NOT_SERVING].load(Ordering::Acquire)
    }
}

impl Drop for FleetState {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `map` mapped; no borrow of
        // `words()` outlives `self`.
        unsafe {
            libc::munmap(self.ptr as *mut libc::c_void, self.words * 8);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A page as the supervisor makes it, and a writable view of it.
    fn page() -> (OwnedFd, *mut AtomicU64) {
        // SAFETY: memfd_create with a static name, ftruncate and a shared
        // read-write mapping of the file it returned (leaked: test only).
        unsafe {
            let fd = libc::memfd_create(c"heartalk-fleet".as_ptr(), libc::MFD_CLOEXEC);
            assert!(fd >= 0);
            let fd = OwnedFd::from_raw_fd(fd);
            assert_eq!(
                libc::ftruncate(fd.as_raw_fd(), FLEET_STATE_BYTES as libc::off_t),
                0
            );
            let p = libc::mmap(
                std::ptr::null_mut(),
                FLEET_STATE_BYTES as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            );
            assert_ne!(p, libc::MAP_FAILED);
            (fd, p.cast())
        }
    }

    #[test]
    fn reads_what_the_supervisor_writes() {
        let (fd, writer) = page();
        let state = FleetState::map(fd).unwrap();
        assert_eq!(state.not_serving(), 0);
        // SAFETY: `writer` maps the same page, aligned, for the test's life.
        let word0 = unsafe { &*writer };
        word0.store(3, Ordering::Release);
        assert_eq!(state.not_serving(), 3);
        word0.store(0, Ordering::Release);
        assert_eq!(state.not_serving(), 0);
    }

    #[test]
    fn an_empty_file_is_refused() {
        // SAFETY: memfd_create with a static name.
        let fd = unsafe {
            OwnedFd::from_raw_fd(libc::memfd_create(c"empty".as_ptr(), libc::MFD_CLOEXEC))
        };
        assert!(FleetState::map(fd).is_err());
    }
}
