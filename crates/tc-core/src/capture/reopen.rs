//! A capture source that can be lost (its device deleted or gone down) and reopened: both
//! binaries keep their sources in one, so both report a loss the same way, retry with the
//! same backoff, and know how long nothing has been captured.
//!
//! Time is an offset from any fixed origin the caller chooses (`now`), so the policy is the
//! same whatever clock a loop keeps.

use std::fmt::Display;
use std::time::Duration;

/// First wait before reopening a lost source; doubled after each failure up to
/// [`REOPEN_BACKOFF_MAX`].
pub const REOPEN_BACKOFF: Duration = Duration::from_millis(200);
pub const REOPEN_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Opens a source again after it was lost.
pub type Reopen<C> = Box<dyn FnMut() -> Result<Box<C>, String>>;

/// A named source, present or lost. `C` is the capture type (`dyn Capture` or an extension
/// of it).
pub struct Reopening<C: ?Sized> {
    pub name: String,
    source: Option<Box<C>>,
    reopen: Option<Reopen<C>>,
    lost_at: Option<Duration>,
    retry_at: Duration,
    backoff: Duration,
}

impl<C: ?Sized> Reopening<C> {
    pub fn new(name: &str, source: Box<C>) -> Reopening<C> {
        Reopening {
            name: name.to_string(),
            source: Some(source),
            reopen: None,
            lost_at: None,
            retry_at: Duration::ZERO,
            backoff: REOPEN_BACKOFF,
        }
    }

    /// How to open it again after a loss (without it a lost source stays lost).
    pub fn with_reopen(mut self, reopen: Reopen<C>) -> Reopening<C> {
        self.reopen = Some(reopen);
        self
    }

    /// The source, unless it is lost.
    pub fn source_mut(&mut self) -> Option<&mut C> {
        self.source.as_deref_mut()
    }

    pub fn is_lost(&self) -> bool {
        self.source.is_none()
    }

    /// Since when it is lost, if it is.
    pub fn lost_at(&self) -> Option<Duration> {
        self.lost_at
    }

    /// The source failed (a read error): dropped, reported loudly, reopened later.
    pub fn lose(&mut self, now: Duration, why: &dyn Display) {
        self.source = None;
        self.lost_at = Some(now);
        self.backoff = REOPEN_BACKOFF;
        self.retry_at = now + self.backoff;
        if self.reopen.is_some() {
            log::error!(
                "capture device {} lost: {why}; reopening it (retries back off up to {} s)",
                self.name,
                REOPEN_BACKOFF_MAX.as_secs()
            );
        } else {
            log::error!("capture device {} lost: {why}", self.name);
        }
    }

    /// Tries to reopen a lost source once its backoff has passed; `register` makes a reopened
    /// source known to the caller's loop. True when it was reopened now.
    pub fn try_reopen(
        &mut self,
        now: Duration,
        register: impl FnOnce(&mut C) -> Result<(), String>,
    ) -> bool {
        let (Some(lost_at), Some(reopen)) = (self.lost_at, self.reopen.as_mut()) else {
            return false;
        };
        if now < self.retry_at {
            return false;
        }
        match reopen().and_then(|mut src| register(&mut src).map(|()| src)) {
            Ok(src) => {
                log::info!(
                    "capture device {} reopened after {} ms",
                    self.name,
                    now.saturating_sub(lost_at).as_millis()
                );
                self.source = Some(src);
                self.lost_at = None;
                true
            }
            Err(e) => {
                self.backoff = (self.backoff * 2).min(REOPEN_BACKOFF_MAX);
                self.retry_at = now + self.backoff;
                log::warn!(
                    "capture device {} still lost ({} s): {e}; next try in {} ms",
                    self.name,
                    now.saturating_sub(lost_at).as_secs(),
                    self.backoff.as_millis()
                );
                false
            }
        }
    }
}

/// Whether the network device `name` no longer exists. A capture whose device is deleted
/// does not always get a read error (an edge-triggered poll may have reported it before the
/// handle saw it), so the loops also check the device itself. `any` and names that are not
/// devices are never "gone".
pub fn device_gone(name: &str) -> bool {
    if name == "any" || name.is_empty() || name.contains(' ') {
        return false;
    }
    let Ok(c) = std::ffi::CString::new(name) else {
        return false;
    };
    // SAFETY: if_nametoindex reads a NUL-terminated string.
    unsafe { libc::if_nametoindex(c.as_ptr()) == 0 }
}

impl<C: ?Sized> Reopening<C> {
    /// Declares the source lost when it has a reopen and its device is gone (see
    /// [`device_gone`]). True when it was lost now.
    pub fn check_device(&mut self, now: Duration) -> bool {
        if self.source.is_none() || self.reopen.is_none() || !device_gone(&self.name) {
            return false;
        }
        self.lose(now, &"the interface is gone");
        true
    }
}

/// How long none of `sources` has worked, if none works now (and at least one was lost).
pub fn all_lost_for<C: ?Sized>(sources: &[Reopening<C>], now: Duration) -> Option<Duration> {
    if sources.is_empty() || sources.iter().any(|s| !s.is_lost()) {
        return None;
    }
    let since = sources.iter().filter_map(|s| s.lost_at).max()?;
    Some(now.saturating_sub(since))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;
    use std::rc::Rc;

    #[test]
    fn lost_then_reopened_with_backoff() {
        let ok = Rc::new(Cell::new(false));
        let tries = Rc::new(Cell::new(0));
        let (o, t) = (ok.clone(), tries.clone());
        let mut s: Reopening<u32> =
            Reopening::new("eth0", Box::new(1)).with_reopen(Box::new(move || {
                t.set(t.get() + 1);
                if o.get() {
                    Ok(Box::new(2))
                } else {
                    Err("No such device".into())
                }
            }));
        let ms = Duration::from_millis;
        s.lose(ms(1_000), &"The interface disappeared");
        assert!(s.is_lost());
        assert_eq!(
            all_lost_for(std::slice::from_ref(&s), ms(4_000)),
            Some(ms(3_000))
        );
        assert!(!s.try_reopen(ms(1_100), |_| Ok(())), "before the backoff");
        assert_eq!(tries.get(), 0);
        assert!(!s.try_reopen(ms(1_200), |_| Ok(())));
        assert_eq!(tries.get(), 1);
        // The next try waits 400 ms.
        assert!(!s.try_reopen(ms(1_500), |_| Ok(())));
        assert_eq!(tries.get(), 1);
        ok.set(true);
        assert!(s.try_reopen(ms(1_600), |_| Ok(())));
        assert_eq!(s.source_mut().copied(), Some(2));
        assert_eq!(all_lost_for(std::slice::from_ref(&s), ms(9_000)), None);
    }

    #[test]
    fn a_source_that_cannot_be_registered_stays_lost() {
        let mut s: Reopening<u32> =
            Reopening::new("eth1", Box::new(1)).with_reopen(Box::new(|| Ok(Box::new(3))));
        s.lose(Duration::ZERO, &"gone");
        assert!(!s.try_reopen(Duration::from_secs(1), |_| Err("epoll".into())));
        assert!(s.is_lost());
        let mut without: Reopening<u32> = Reopening::new("eth2", Box::new(1));
        without.lose(Duration::ZERO, &"gone");
        assert!(!without.try_reopen(Duration::from_secs(60), |_| Ok(())));
    }
}
