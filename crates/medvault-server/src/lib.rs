//! medvault-server
