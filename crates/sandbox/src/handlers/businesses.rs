//! (being written) businesses handlers.

use std::collections::HashMap;

use super::{Ctx, Handler, Seed};
use crate::error::ApiError;

/// Registers the handlers of this module.
pub fn register(_map: &mut HashMap<&'static str, Handler>) {}

/// Adds this area's demo data to the seeded location.
pub fn seed(_ctx: &mut Ctx<'_>, _seed: &mut Seed) -> Result<(), ApiError> {
    Ok(())
}
