//! Delivery: turning table changes into stanzas.
//!
//! The fan-out backend (`fanout`) serves Prosody and ejabberd through XEP-0356 privileges.
//! A Tigase session backend (USER_STATUS) is planned; when it lands, a `Backend` trait will sit here.

pub mod fanout;
