//! stub (being written)
