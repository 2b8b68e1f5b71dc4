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
