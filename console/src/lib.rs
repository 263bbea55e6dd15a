//! The Shouwang control-room console.
