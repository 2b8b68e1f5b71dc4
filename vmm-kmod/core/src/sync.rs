//! A mutex over the host's raw lock, so the core's shared state is reached only while
//! the lock is held (the guard derefs to the data).

use crate::host::RawMutex;
use core::cell::UnsafeCell;
use core::ops::{Deref, DerefMut};

pub struct Mutex<R: RawMutex, T> {
    raw: R,
    data: UnsafeCell<T>,
}

// SAFETY: the data is only reached through a guard, and guards exist only while the raw
// lock is held, so at most one thread touches `T` at a time: `T: Send` is enough.
unsafe impl<R: RawMutex, T: Send> Sync for Mutex<R, T> {}
// SAFETY: moving the mutex moves the data; `R` is Send by its trait bound.
unsafe impl<R: RawMutex, T: Send> Send for Mutex<R, T> {}

impl<R: RawMutex, T> Mutex<R, T> {
    pub fn new(data: T) -> Self {
        Mutex {
            raw: R::new(),
            data: UnsafeCell::new(data),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, R, T> {
        self.raw.lock();
        MutexGuard { m: self }
    }

    pub fn try_lock(&self) -> Option<MutexGuard<'_, R, T>> {
        if self.raw.try_lock() {
            Some(MutexGuard { m: self })
        } else {
            None
        }
    }

    pub fn into_inner(self) -> T {
        self.data.into_inner()
    }

    /// The data, through exclusive access to the mutex itself (no locking needed).
    pub fn get_mut(&mut self) -> &mut T {
        self.data.get_mut()
    }
}

pub struct MutexGuard<'a, R: RawMutex, T> {
    m: &'a Mutex<R, T>,
}

impl<R: RawMutex, T> Deref for MutexGuard<'_, R, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the guard exists only while this thread holds the raw lock.
        unsafe { &*self.m.data.get() }
    }
}

impl<R: RawMutex, T> DerefMut for MutexGuard<'_, R, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: the guard exists only while this thread holds the raw lock, and
        // `&mut self` makes this the only reference made through it.
        unsafe { &mut *self.m.data.get() }
    }
}

impl<R: RawMutex, T> Drop for MutexGuard<'_, R, T> {
    fn drop(&mut self) {
        self.m.raw.unlock();
    }
}

/// A [`RawMutex`] that spins: for hosts with no scheduler to sleep in (the testbed
/// kernel) and for the fake host of the tests. Waiting threads spin with the CPU's
/// spin-wait hint; under std they give up their time slice instead, so a holder that
/// was preempted gets to run.
pub struct SpinMutex(core::sync::atomic::AtomicBool);

impl SpinMutex {
    /// An unlocked lock, in constant context (for statics).
    pub const fn unlocked() -> SpinMutex {
        SpinMutex(core::sync::atomic::AtomicBool::new(false))
    }
}

/// A [`Mutex`] over a [`SpinMutex`]; `const`-constructible, for statics.
pub type SpinLock<T> = Mutex<SpinMutex, T>;

impl<T> SpinLock<T> {
    pub const fn new_spin(data: T) -> Self {
        Mutex {
            raw: SpinMutex::unlocked(),
            data: UnsafeCell::new(data),
        }
    }
}

// SAFETY: `try_lock` succeeds only by swapping false for true (acquire) and `unlock`
// stores false (release), so between a successful lock and its unlock no other lock
// returns: mutual exclusion, as the trait requires.
unsafe impl RawMutex for SpinMutex {
    fn new() -> Self {
        SpinMutex::unlocked()
    }
    fn lock(&self) {
        while !self.try_lock() {
            #[cfg(any(test, feature = "fake-host"))]
            std::thread::yield_now();
            #[cfg(not(any(test, feature = "fake-host")))]
            core::hint::spin_loop();
        }
    }
    fn try_lock(&self) -> bool {
        use core::sync::atomic::Ordering;
        self.0
            .compare_exchange(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_ok()
    }
    fn unlock(&self) {
        self.0.store(false, core::sync::atomic::Ordering::Release);
    }
}
