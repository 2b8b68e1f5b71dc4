//! vmm-kmod: the kernel side. Being written.
#![no_std]
