//! Reading a JSON request body into its typed form. JSON has one kind of number, and JSON
//! Schema (the API document) counts `30.0` as the integer 30, as clients that hold every
//! number as a float (Python's `float`, JavaScript) send it. Serde refuses a float where
//! an integer is expected; the adapter here gives integer fields the integer when the float
//! is integral and in range, and passes every other value through unchanged, so free-form
//! JSON (attribute values, job parameters) keeps exactly what was sent.

use serde::de::{
    self, DeserializeSeed, Deserializer, EnumAccess, IntoDeserializer, MapAccess, SeqAccess,
    VariantAccess, Visitor,
};
use serde_json::{Map, Value};

/// `T` from `v`, with integral floats accepted for integer fields.
pub fn from_value<T: de::DeserializeOwned>(v: Value) -> Result<T, serde_json::Error> {
    T::deserialize(Lenient(v))
}

struct Lenient(Value);

/// The integer an integral float stands for (within ±2^53, where floats are exact).
fn integral(v: &Value) -> Option<Value> {
    const EXACT: f64 = 9_007_199_254_740_992.0;
    let f = v.as_f64().filter(|_| v.is_f64())?;
    (f.fract() == 0.0 && f.abs() <= EXACT).then(|| Value::from(f as i64))
}

macro_rules! integer {
    ($($method:ident)*) => {$(
        fn $method<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
            match integral(&self.0) {
                Some(i) => i.$method(visitor),
                None => self.0.$method(visitor),
            }
        }
    )*};
}

impl<'de> Deserializer<'de> for Lenient {
    type Error = serde_json::Error;

    fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Array(a) => visitor.visit_seq(Seq(a.into_iter())),
            Value::Object(m) => visitor.visit_map(Fields {
                iter: m.into_iter(),
                value: None,
            }),
            other => other.deserialize_any(visitor),
        }
    }

    integer! {
        deserialize_i8 deserialize_i16 deserialize_i32 deserialize_i64 deserialize_i128
        deserialize_u8 deserialize_u16 deserialize_u32 deserialize_u64 deserialize_u128
    }

    fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Null => visitor.visit_none(),
            v => visitor.visit_some(Lenient(v)),
        }
    }

    fn deserialize_newtype_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_newtype_struct(self)
    }

    fn deserialize_enum<V: Visitor<'de>>(
        self,
        name: &'static str,
        variants: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(m) if m.len() == 1 => {
                let (variant, value) = m.into_iter().next().expect("one entry");
                visitor.visit_enum(Variant {
                    variant,
                    value: Some(value),
                })
            }
            Value::String(variant) => visitor.visit_enum(Variant {
                variant,
                value: None,
            }),
            other => other.deserialize_enum(name, variants, visitor),
        }
    }

    /// A struct comes from an object only: serde would also take an array of its fields
    /// (`[null, null]`), which no client means.
    fn deserialize_struct<V: Visitor<'de>>(
        self,
        _name: &'static str,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.0 {
            Value::Object(_) => self.deserialize_any(visitor),
            other => Err(de::Error::invalid_type(
                unexpected(&other),
                &"a JSON object",
            )),
        }
    }

    serde::forward_to_deserialize_any! {
        bool f32 f64 char str string bytes byte_buf unit unit_struct seq tuple tuple_struct
        map identifier ignored_any
    }
}

fn unexpected(v: &Value) -> de::Unexpected<'_> {
    match v {
        Value::Null => de::Unexpected::Unit,
        Value::Bool(b) => de::Unexpected::Bool(*b),
        Value::Number(_) => de::Unexpected::Other("a number"),
        Value::String(s) => de::Unexpected::Str(s),
        Value::Array(_) => de::Unexpected::Seq,
        Value::Object(_) => de::Unexpected::Map,
    }
}

struct Seq(std::vec::IntoIter<Value>);

impl<'de> SeqAccess<'de> for Seq {
    type Error = serde_json::Error;

    fn next_element_seed<T: DeserializeSeed<'de>>(
        &mut self,
        seed: T,
    ) -> Result<Option<T::Value>, Self::Error> {
        self.0
            .next()
            .map(|v| seed.deserialize(Lenient(v)))
            .transpose()
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.0.len())
    }
}

struct Fields {
    iter: <Map<String, Value> as IntoIterator>::IntoIter,
    value: Option<Value>,
}

impl<'de> MapAccess<'de> for Fields {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        match self.iter.next() {
            Some((k, v)) => {
                self.value = Some(v);
                seed.deserialize(k.into_deserializer()).map(Some)
            }
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        match self.value.take() {
            Some(v) => seed.deserialize(Lenient(v)),
            None => Err(de::Error::custom("a value without its key")),
        }
    }

    fn size_hint(&self) -> Option<usize> {
        Some(self.iter.len())
    }
}

struct Variant {
    variant: String,
    value: Option<Value>,
}

impl<'de> EnumAccess<'de> for Variant {
    type Error = serde_json::Error;
    type Variant = Self;

    fn variant_seed<S: DeserializeSeed<'de>>(
        self,
        seed: S,
    ) -> Result<(S::Value, Self), Self::Error> {
        let name: de::value::StringDeserializer<serde_json::Error> =
            self.variant.clone().into_deserializer();
        seed.deserialize(name).map(|v| (v, self))
    }
}

impl<'de> VariantAccess<'de> for Variant {
    type Error = serde_json::Error;

    fn unit_variant(self) -> Result<(), Self::Error> {
        match self.value {
            None | Some(Value::Null) => Ok(()),
            Some(_) => Err(de::Error::invalid_type(
                de::Unexpected::Map,
                &"a unit variant",
            )),
        }
    }

    fn newtype_variant_seed<T: DeserializeSeed<'de>>(
        self,
        seed: T,
    ) -> Result<T::Value, Self::Error> {
        match self.value {
            Some(v) => seed.deserialize(Lenient(v)),
            None => Err(de::Error::invalid_type(
                de::Unexpected::UnitVariant,
                &"a newtype variant",
            )),
        }
    }

    fn tuple_variant<V: Visitor<'de>>(
        self,
        _len: usize,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.value {
            Some(v) => Lenient(v).deserialize_any(visitor),
            None => Err(de::Error::invalid_type(
                de::Unexpected::UnitVariant,
                &"a tuple variant",
            )),
        }
    }

    fn struct_variant<V: Visitor<'de>>(
        self,
        _fields: &'static [&'static str],
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        match self.value {
            Some(v @ Value::Object(_)) => Lenient(v).deserialize_any(visitor),
            Some(other) => Err(de::Error::invalid_type(
                unexpected(&other),
                &"a JSON object",
            )),
            None => Err(de::Error::invalid_type(
                de::Unexpected::UnitVariant,
                &"a struct variant",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Body {
        days: Option<u32>,
        n: i64,
        #[serde(default)]
        free: Value,
        #[serde(default)]
        list: Vec<u8>,
        #[serde(default)]
        kind: Option<Kind>,
        #[serde(default)]
        tagged: Option<Tagged>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(rename_all = "snake_case")]
    enum Kind {
        Plain,
        At(u64),
        Span { secs: u32 },
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(tag = "type", rename_all = "snake_case")]
    enum Tagged {
        Issued { days: u32 },
    }

    #[test]
    fn integral_floats_fill_integer_fields_and_free_json_is_untouched() {
        let b: Body = from_value(json!({
            "days": 30.0, "n": -2.0, "free": {"x": 1.0, "y": [2.5, 3]}, "list": [1.0, 2],
            "kind": {"span": {"secs": 5.0}}
        }))
        .expect("accepted");
        assert_eq!(b.days, Some(30));
        assert_eq!(b.n, -2);
        assert_eq!(b.list, vec![1, 2]);
        assert_eq!(b.kind, Some(Kind::Span { secs: 5 }));
        // The free-form value keeps its floats as floats.
        assert_eq!(b.free, json!({"x": 1.0, "y": [2.5, 3]}));
        assert!(b.free["x"].is_f64());

        let b: Body = from_value(json!({"n": 1, "kind": "plain"})).expect("unit variant");
        assert_eq!(b.kind, Some(Kind::Plain));
        let b: Body = from_value(json!({"n": 1, "kind": {"at": 7.0}})).expect("newtype");
        assert_eq!(b.kind, Some(Kind::At(7)));
        let b: Body =
            from_value(json!({"n": 1, "tagged": {"type": "issued", "days": 3}})).expect("tagged");
        assert_eq!(b.tagged, Some(Tagged::Issued { days: 3 }));
    }

    #[test]
    fn what_serde_refuses_stays_refused() {
        for bad in [
            json!({"n": 1.5}),
            json!({"n": 1, "days": -1.0}),
            json!({"n": 1, "days": 1e20}),
            json!({"n": "1"}),
            json!({"n": 1, "other": 2}),
            json!({"n": 1, "list": [256.0]}),
            json!({"n": 1, "kind": {"plain": 1, "at": 2}}),
            json!({"n": 1, "kind": {"span": [5]}}),
            json!([null, 1]),
        ] {
            assert!(
                from_value::<Body>(bad.clone()).is_err(),
                "{bad} was accepted"
            );
        }
    }
}
