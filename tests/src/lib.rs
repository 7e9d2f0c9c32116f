//! Helpers shared by paychan's end-to-end tests.
