//! VM_RUN through the dispatcher with scripted guests.
