//! Host unit tests of the contract crate that need more than one file.

mod mmio_queue;
mod regs;
mod timer;

use crate::*;

#[test]
fn name_limits() {
    assert_eq!(VM_MAX_NAMELEN, 229);
    assert_eq!(validate_vm_name(b""), Err(NameError::Empty));
    assert_eq!(validate_vm_name(b"a/b"), Err(NameError::BadChar(b'/')));
    assert_eq!(validate_vm_name(b"a\0b"), Err(NameError::BadChar(0)));
    assert_eq!(validate_vm_name(b".."), Err(NameError::BadChar(b'.')));
    assert!(validate_vm_name(&[b'x'; 229]).is_ok());
    assert_eq!(validate_vm_name(&[b'x'; 230]), Err(NameError::TooLong));
    assert!(validate_vm_name(b"vm-1.test").is_ok());
}
