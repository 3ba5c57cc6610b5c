//! Built without the `redis` feature: no Redis sockets, and `--redis`
//! stops startup with a line that says why.

use std::io;

use mio::Registry;
use mio::event::Event;

use super::stream::Stream;
use crate::config::Config;
use crate::hub::Hub;
use crate::redis::{Bridge, Role};
use crate::time::Millis;

pub(super) enum RedisSockets {}

impl RedisSockets {
    pub(super) fn for_config(config: &Config) -> io::Result<Option<RedisSockets>> {
        match config.redis {
            Some(_) => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "this wshub was built without the `redis` feature; --redis needs it",
            )),
            None => Ok(None),
        }
    }

    pub(super) fn bridge(&self, _: &Config) -> Bridge {
        match *self {}
    }

    pub(super) fn ready(&mut self, _: Role, _: &Event, _: &mut Hub<Stream>, _: Millis) {
        match *self {}
    }

    pub(super) fn turn(&mut self, _: &Registry, _: &mut Hub<Stream>, _: &mut [u8], _: Millis) {
        match *self {}
    }

    pub(super) fn wants_turn(&self) -> bool {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn without_the_feature_redis_stops_startup() {
        let url = crate::redis::RedisUrl::parse("redis://127.0.0.1:6379").unwrap();
        let config = Config { redis: Some(url), ..Config::default() };
        let err = RedisSockets::for_config(&config).err().unwrap();
        assert!(err.to_string().contains("without the `redis` feature"), "{err}");
        assert!(RedisSockets::for_config(&Config::default()).unwrap().is_none());
    }
}
