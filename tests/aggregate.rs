//! What the macros generate: the event enum, routing, every handler return shape,
//! ids, names and the `crate = path` override.

#![allow(missing_docs)]

use eda::prelude::*;
use eda::testing::Fixture;
use eda::Handle;

#[event]
#[derive(Debug, Clone, PartialEq)]
pub struct Named {
    pub label: String,
}

#[event(name = "shapes.Tupled", version = 3)]
#[derive(Debug, Clone, PartialEq)]
pub struct Tupled(pub u32, pub String);

#[event]
#[derive(Debug, Clone, PartialEq)]
pub struct Unit;

#[command]
#[derive(Debug, Clone)]
pub struct One {
    #[aggregate_id]
    pub id: u64,
}

#[command]
#[derive(Debug, Clone)]
pub struct Maybe {
    #[aggregate_id]
    pub id: u64,
    pub emit: bool,
}

#[command]
#[derive(Debug, Clone)]
pub struct Many(#[aggregate_id] pub u64, pub u32);

#[command]
#[derive(Debug, Clone)]
pub struct Several {
    #[aggregate_id]
    pub id: u64,
}

#[command]
#[derive(Debug, Clone)]
pub struct Nothing {
    #[aggregate_id]
    pub id: u64,
}

#[command]
#[derive(Debug, Clone)]
pub struct Converted {
    #[aggregate_id]
    pub id: u64,
}

/// A handler's own error converts into the aggregate's with `From`.
#[derive(Debug)]
pub struct LimitReached;

impl From<LimitReached> for ShapeError {
    fn from(_: LimitReached) -> Self {
        ShapeError::Refused
    }
}

#[command]
#[derive(Debug, Clone)]
pub struct Aliased {
    #[aggregate_id]
    pub id: u64,
}

#[derive(Debug, PartialEq)]
pub enum ShapeError {
    Refused,
}

type ShapeResult<T> = Result<T, ShapeError>;

#[derive(Debug, Default)]
pub struct Shapes {
    log: Vec<String>,
}

#[aggregate(id = u64, error = ShapeError, name = "test.Shapes")]
impl Shapes {
    #[handle]
    fn one(&self, _: One) -> Result<Named, ShapeError> {
        Ok(Named {
            label: "one".into(),
        })
    }

    #[handle]
    fn maybe(&self, cmd: Maybe) -> Result<Option<Unit>, ShapeError> {
        Ok(cmd.emit.then_some(Unit))
    }

    #[handle]
    fn many(&self, cmd: Many) -> Result<Vec<ShapesEvent>, ShapeError> {
        Ok((0..cmd.1).map(|i| Tupled(i, "n".into()).into()).collect())
    }

    #[handle]
    fn several(&self, _: Several) -> Result<(Named, Option<Unit>, Vec<Tupled>), ShapeError> {
        Ok((
            Named { label: "a".into() },
            Some(Unit),
            vec![Tupled(1, "x".into()), Tupled(2, "y".into())],
        ))
    }

    #[handle]
    fn nothing(&self, _: Nothing) -> Result<(), ShapeError> {
        if self.log.len() > 100 {
            return Err(ShapeError::Refused);
        }
        Ok(())
    }

    #[handle]
    fn converted(&self, _: Converted) -> Result<Unit, LimitReached> {
        Err(LimitReached)
    }

    #[handle]
    fn aliased(&self, _: Aliased) -> ShapeResult<Named> {
        Ok(Named {
            label: "alias".into(),
        })
    }

    #[apply]
    fn named(&mut self, e: &Named) {
        self.log.push(format!("named {}", e.label));
    }

    #[apply]
    fn tupled(&mut self, e: &Tupled) {
        self.log.push(format!("tupled {} {}", e.0, e.1));
    }

    #[apply]
    fn unit(&mut self, _: &Unit) {
        self.log.push("unit".into());
    }

    /// An ordinary method stays an ordinary method.
    fn log(&self) -> &[String] {
        &self.log
    }
}

#[test]
fn event_constants_come_from_the_attribute() {
    assert_eq!((Named::NAME, Named::VERSION), ("Named", 1));
    assert_eq!((Tupled::NAME, Tupled::VERSION), ("shapes.Tupled", 3));
    assert_eq!(<Shapes as Aggregate>::TYPE, "test.Shapes");
    assert_eq!(<One as Command>::NAME, "One");
    assert_eq!(*One { id: 7 }.aggregate_id(), 7);
    assert_eq!(*Many(9, 0).aggregate_id(), 9);
}

#[test]
fn events_serialize_with_serde_through_eda() {
    assert_eq!(
        serde_json::to_string(&Tupled(1, "a".into())).unwrap(),
        r#"[1,"a"]"#
    );
    assert_eq!(serde_json::to_string(&Unit).unwrap(), "null");
    let e = ShapesEvent::from(Named { label: "x".into() });
    assert_eq!((e.name(), e.version()), ("Named", 1));
    assert_eq!(e.encode().unwrap(), r#"{"label":"x"}"#);
    let back = ShapesEvent::decode("shapes.Tupled", 3, r#"[4,"z"]"#).unwrap();
    assert!(matches!(back, ShapesEvent::Tupled(Tupled(4, ref s)) if s == "z"));
    assert!(
        ShapesEvent::decode("Tupled", 3, r#"[4,"z"]"#).is_err(),
        "the stored name is what counts"
    );
}

fn decide<C>(state: &Shapes, cmd: C) -> Vec<String>
where
    Shapes: Handle<C>,
{
    let mut events = Vec::new();
    state.handle(cmd, &(), &mut events).unwrap();
    let mut after = Shapes::default();
    for e in &events {
        after.apply(e);
    }
    after.log().to_vec()
}

#[test]
fn every_return_shape_becomes_events_in_order() {
    let s = Shapes::default();
    assert_eq!(decide(&s, One { id: 1 }), ["named one"]);
    assert_eq!(decide(&s, Maybe { id: 1, emit: true }), ["unit"]);
    assert!(decide(&s, Maybe { id: 1, emit: false }).is_empty());
    assert_eq!(decide(&s, Many(1, 2)), ["tupled 0 n", "tupled 1 n"]);
    assert_eq!(
        decide(&s, Several { id: 1 }),
        ["named a", "unit", "tupled 1 x", "tupled 2 y"]
    );
    assert!(decide(&s, Nothing { id: 1 }).is_empty());
    assert_eq!(decide(&s, Aliased { id: 1 }), ["named alias"]);
}

#[tokio::test]
async fn commands_route_by_type_through_app() {
    let store = MemoryStore::new();
    let app = App::new(store.clone());
    let done = app.execute(Several { id: 42 }).await.unwrap();
    assert_eq!((done.version, done.events.len()), (4, 4));
    let nothing = app.execute(Nothing { id: 42 }).await.unwrap();
    assert_eq!(
        (nothing.version, nothing.position, nothing.events.len()),
        (4, None, 0)
    );
    app.execute(Many(42, 3)).await.unwrap();
    let shapes: Shapes = app.load(&42).await.unwrap();
    assert_eq!(shapes.log().len(), 7);
    let stored = store.read_all(0, 100).await.unwrap();
    assert_eq!(stored[0].aggregate_type, "test.Shapes");
    assert_eq!(stored[0].aggregate_id, "42");
    assert_eq!(stored[2].name, "shapes.Tupled");
    assert_eq!(stored[2].event_version, 3);
}

#[test]
fn handler_errors_convert_into_the_aggregate_error() {
    Fixture::<Shapes>::given(())
        .when(Converted { id: 1 })
        .then_expect_error(ShapeError::Refused);
}

#[test]
fn fixture_takes_the_same_shapes() {
    Fixture::<Shapes>::given((Named { label: "x".into() }, vec![Unit, Unit]))
        .when(Several { id: 1 })
        .then_expect_events((
            Named { label: "a".into() },
            Unit,
            Tupled(1, "x".into()),
            Some(Tupled(2, "y".into())),
        ));
}
