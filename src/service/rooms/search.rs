//! Full-text search over room events: an inverted index written in the same batch as each event
//! (`commit` calls [`Search::index_in_batch`]), emptied for an event when it is redacted, and the
//! query behind `POST /search` (`room_events`).
//!
//! Words: the text of `content.body` (`m.room.message`), `content.name` (`m.room.name`) and
//! `content.topic` (`m.room.topic`) is lower-cased and split on every character that is not a
//! letter or digit (Unicode classes, so "Größe" and "東京" are words); a word longer than
//! [`MAX_WORD_BYTES`] is cut there, and an event indexes at most [`MAX_WORDS_PER_EVENT`]
//! distinct words. A query is split the same way; a result must contain every query word (AND).
//! Its rank is the number of times the query words occur in it (term frequency, summed).
//!
//! The full-text index `roomwordcount_posting` (short room ID, word, stream position → short event ID, occurrences, key and `url` flags, sender), written by `commit` in the event's batch for `m.room.message` bodies, `m.room.name` names and `m.room.topic` topics (lower-cased runs of Unicode letters and digits), and emptied for an event in the batch of its redaction.
//! A query is one prefix scan per word per room the user is or was in (left rooms up to the leave); every word must match (AND), rank is the summed occurrences, filters, keys and ignored senders are decided from the postings, and history visibility is read once per state snapshot (`visibility::user_can_see_short`), so the count is exact without reading the events; only the page's events are loaded.

use std::{
    cmp::Reverse,
    collections::{HashMap, HashSet},
};

use ruma::{
    events::{room::member::MembershipState, TimelineEventType},
    OwnedRoomId, OwnedUserId, UserId,
};
use serde_json::Value;

use super::{pdu::Pdu, visibility};
use crate::{
    error::{Error, Result},
    service::{filter::RoomEventFilter, Services},
    store::{key, Batch, Db, Tree},
};

/// Longest indexed word, in bytes (cut at a character boundary); longer words match on their
/// first [`MAX_WORD_BYTES`] bytes.
pub const MAX_WORD_BYTES: usize = 64;
/// Most distinct words indexed for one event; the rest of a very long text is not searchable.
pub const MAX_WORDS_PER_EVENT: usize = 1024;
/// Most query words; a longer query is a bad request.
pub const MAX_QUERY_WORDS: usize = 16;

/// Which field a posting came from; stored in the low bits of its flags byte.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SearchKey {
    Body = 0,
    Name = 1,
    Topic = 2,
}

impl SearchKey {
    /// The key as the spec names it (`content.body`, ...).
    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "content.body" => Some(Self::Body),
            "content.name" => Some(Self::Name),
            "content.topic" => Some(Self::Topic),
            _ => None,
        }
    }

    /// The event type and content field this key indexes.
    fn of(kind: &TimelineEventType) -> Option<(Self, &'static str)> {
        match kind {
            TimelineEventType::RoomMessage => Some((Self::Body, "body")),
            TimelineEventType::RoomName => Some((Self::Name, "name")),
            TimelineEventType::RoomTopic => Some((Self::Topic, "topic")),
            _ => None,
        }
    }

    fn event_type(self) -> &'static str {
        match self {
            Self::Body => "m.room.message",
            Self::Name => "m.room.name",
            Self::Topic => "m.room.topic",
        }
    }

    fn from_flags(flags: u8) -> Self {
        match flags & 0b11 {
            1 => Self::Name,
            2 => Self::Topic,
            _ => Self::Body,
        }
    }
}

/// Flag bit: the event's content has a string `url` (for the filter's `contains_url`).
const FLAG_URL: u8 = 0b100;

/// Owns `roomwordcount_posting` (short room ID u64, word UTF-8, 0xff, stream position u64 →
/// short event ID u64, occurrences u16, flags u8 (key in bits 0-1, `url` in bit 2), sender ID).
/// A query word is one prefix scan per room; the sender and flags in the value let filters,
/// ignored users and the count be decided without reading the events.
pub struct Search {
    roomwordcount_posting: Tree,
}

/// Splits text into index words: lower-case runs of letters and digits, each cut to
/// [`MAX_WORD_BYTES`].
pub fn words(text: &str) -> impl Iterator<Item = String> + '_ {
    text.split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(|word| {
            let mut word = word.to_lowercase();
            if word.len() > MAX_WORD_BYTES {
                let mut end = MAX_WORD_BYTES;
                while !word.is_char_boundary(end) {
                    end -= 1;
                }
                word.truncate(end);
            }
            word
        })
}

/// The distinct words of an event's searchable field with their occurrences, with its key and
/// flags; `None` for events that are not searched.
fn postings(kind: &TimelineEventType, content: &Value) -> Option<(HashMap<String, u16>, u8)> {
    let (search_key, field) = SearchKey::of(kind)?;
    let text = content.get(field)?.as_str()?;
    let mut counts: HashMap<String, u16> = HashMap::new();
    for word in words(text) {
        if counts.len() >= MAX_WORDS_PER_EVENT && !counts.contains_key(&word) {
            continue;
        }
        let entry = counts.entry(word).or_default();
        *entry = entry.saturating_add(1);
    }
    let mut flags = search_key as u8;
    if content.get("url").is_some_and(Value::is_string) {
        flags |= FLAG_URL;
    }
    Some((counts, flags))
}

fn posting_key(shortroomid: u64, word: &str, count: u64) -> Vec<u8> {
    let mut db_key = word_prefix(shortroomid, word);
    db_key.extend_from_slice(&key::u64_bytes(count));
    db_key
}

fn word_prefix(shortroomid: u64, word: &str) -> Vec<u8> {
    let mut prefix = Vec::with_capacity(8 + word.len() + 1 + 8);
    prefix.extend_from_slice(&key::u64_bytes(shortroomid));
    prefix.extend_from_slice(word.as_bytes());
    prefix.push(key::SEP);
    prefix
}

/// One event that contains every query word.
#[derive(Clone, Debug)]
pub struct Hit {
    pub count: u64,
    pub shorteventid: u64,
    /// Occurrences of the query words, summed.
    pub rank: u64,
    pub search_key: SearchKey,
    pub has_url: bool,
    /// The sender's user ID as stored (checked only against filters and the ignore list).
    pub sender: Box<str>,
}

impl Search {
    /// Opens the tree.
    pub fn open(db: &std::sync::Arc<Db>) -> Self {
        Self {
            roomwordcount_posting: db.tree("roomwordcount_posting"),
        }
    }

    /// Indexes an event in its commit batch, before its stream position is known: the
    /// postings wait for it (`Batch::insert_at_count`), so the tokenising happens outside the
    /// commit lock.
    pub fn index_in_batch(
        &self,
        (shortroomid, shorteventid): (u64, u64),
        pdu: &Pdu,
        batch: &mut Batch,
    ) {
        if pdu.rejected {
            return;
        }
        let Some((counts, flags)) = postings(&pdu.kind, &pdu.content_value()) else {
            return;
        };
        for (word, occurrences) in counts {
            let mut value = key::u64_bytes(shorteventid).to_vec();
            value.extend_from_slice(&occurrences.to_be_bytes());
            value.push(flags);
            value.extend_from_slice(pdu.sender.as_bytes());
            batch.insert_at_count(
                &self.roomwordcount_posting,
                &word_prefix(shortroomid, &word),
                &value,
            );
        }
    }

    /// Removes an event's words (its content before redaction) from the index.
    pub fn remove_in_batch(
        &self,
        (shortroomid, count): (u64, u64),
        kind: &str,
        content: &Value,
        batch: &mut Batch,
    ) {
        let kind = TimelineEventType::from(kind);
        let Some((counts, _)) = postings(&kind, content) else {
            return;
        };
        for word in counts.keys() {
            batch.remove(
                &self.roomwordcount_posting,
                &posting_key(shortroomid, word, count),
            );
        }
    }

    /// The events of a room that contain every word, with positions below `below`, in stream
    /// order. Each word's postings come sorted by position, so the words are intersected by
    /// merging; the postings of the first word are the only ones decoded in full.
    pub fn find(&self, shortroomid: u64, query: &[String], below: u64) -> Result<Vec<Hit>> {
        let Some((first, rest)) = query.split_first() else {
            return Ok(Vec::new());
        };
        let mut hits = Vec::new();
        self.scan(shortroomid, first, below, |count, value| {
            hits.push(parse_hit(count, value)?);
            Ok(())
        })?;
        for word in rest {
            if hits.is_empty() {
                break;
            }
            let mut next = 0;
            let mut kept = Vec::with_capacity(hits.len());
            self.scan(shortroomid, word, below, |count, value| {
                while next < hits.len() && hits[next].count < count {
                    next += 1;
                }
                if let Some(hit) = hits.get(next).filter(|hit| hit.count == count) {
                    let mut hit = hit.clone();
                    hit.rank += occurrences(value)?;
                    kept.push(hit);
                    next += 1;
                }
                Ok(())
            })?;
            hits = kept;
        }
        Ok(hits)
    }

    /// Calls `each` with the position and value of a word's postings below `below`, in order.
    fn scan(
        &self,
        shortroomid: u64,
        word: &str,
        below: u64,
        mut each: impl FnMut(u64, &[u8]) -> Result<()>,
    ) -> Result<()> {
        let prefix = word_prefix(shortroomid, word);
        for entry in self.roomwordcount_posting.iter_prefix(&prefix) {
            let (db_key, value) = entry?;
            let count = key::read_u64(&db_key[prefix.len()..])
                .ok_or_else(|| Error::corrupt("roomwordcount_posting", "short key"))?;
            if count >= below {
                break;
            }
            each(count, &value)?;
        }
        Ok(())
    }
}

fn occurrences(value: &[u8]) -> Result<u64> {
    value
        .get(8..10)
        .map(|bytes| u64::from(u16::from_be_bytes([bytes[0], bytes[1]])))
        .ok_or_else(|| Error::corrupt("roomwordcount_posting", "short value"))
}

fn parse_hit(count: u64, value: &[u8]) -> Result<Hit> {
    let corrupt = |detail: &str| Error::corrupt("roomwordcount_posting", detail);
    let shorteventid = key::read_u64(value).ok_or_else(|| corrupt("short value"))?;
    let flags = *value.get(10).ok_or_else(|| corrupt("short value"))?;
    let sender = std::str::from_utf8(&value[11..]).map_err(|_| corrupt("sender"))?;
    Ok(Hit {
        count,
        shorteventid,
        rank: occurrences(value)?,
        search_key: SearchKey::from_flags(flags),
        has_url: flags & FLAG_URL != 0,
        sender: sender.into(),
    })
}

/// The order of results.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// Most occurrences first, newest first among equals.
    Rank,
    /// Newest first.
    Recent,
}

/// A search over the rooms a user is or was in.
pub struct SearchRequest<'a> {
    pub user: &'a UserId,
    pub words: Vec<String>,
    /// The fields to search; empty means all.
    pub keys: Vec<SearchKey>,
    pub filter: RoomEventFilter,
    pub order: Order,
    pub limit: usize,
    /// The `next_batch` of an earlier page.
    pub next_batch: Option<&'a str>,
}

/// One result: where the event is and how it ranked.
pub struct Found {
    pub room_id: OwnedRoomId,
    pub shortroomid: u64,
    pub count: u64,
    pub shorteventid: u64,
    pub rank: u64,
}

/// A page of results.
pub struct SearchPage {
    /// Every result the user may see, on every page.
    pub count: usize,
    pub results: Vec<Found>,
    pub next_batch: Option<String>,
}

/// Where a page ends: the last result's rank and position; the next page starts after it.
fn parse_next_batch(token: &str, order: Order) -> Result<(u64, u64)> {
    let invalid = || Error::invalid_param(format!("invalid next_batch {token}"));
    match (order, token.split_once('_')) {
        (Order::Recent, None) => {
            let count = token.strip_prefix('r').ok_or_else(invalid)?;
            Ok((0, count.parse().map_err(|_| invalid())?))
        }
        (Order::Rank, Some((rank, count))) => {
            let rank = rank.strip_prefix('k').ok_or_else(invalid)?;
            Ok((
                rank.parse().map_err(|_| invalid())?,
                count.parse().map_err(|_| invalid())?,
            ))
        }
        _ => Err(invalid()),
    }
}

/// Runs a search: every room the user is or was in (left rooms up to their leave), the filter's
/// rooms, types, senders and `contains_url`, non-state events of users the searcher ignores
/// left out, and only events the history visibility lets the user see.
pub fn search(services: &Services, request: &SearchRequest<'_>) -> Result<SearchPage> {
    let cursor = request
        .next_batch
        .map(|token| parse_next_batch(token, request.order))
        .transpose()?;
    let ignored = services.account_data.ignored_users(request.user)?;
    let mut found = Vec::new();
    for membership in services.rooms.members.iter_rooms(request.user)? {
        let below = match membership.membership {
            MembershipState::Join => u64::MAX,
            MembershipState::Leave | MembershipState::Ban => membership.count,
            _ => continue,
        };
        if !request.filter.room_allowed(membership.room_id.as_str()) {
            continue;
        }
        let Some(shortroomid) = services.rooms.short.get_shortroomid(&membership.room_id)? else {
            continue;
        };
        let hits = services
            .rooms
            .search
            .find(shortroomid, &request.words, below)?;
        let mut visible_by_state = HashMap::new();
        for hit in hits {
            if !wanted(request, &ignored, &hit)
                || !visibility::user_can_see_short(
                    services,
                    request.user,
                    Some(&membership),
                    (hit.count, hit.shorteventid),
                    &mut visible_by_state,
                )?
            {
                continue;
            }
            found.push(Found {
                room_id: membership.room_id.clone(),
                shortroomid,
                count: hit.count,
                shorteventid: hit.shorteventid,
                rank: hit.rank,
            });
        }
    }
    let total = found.len();
    match request.order {
        Order::Recent => found.sort_unstable_by_key(|result| Reverse(result.count)),
        Order::Rank => found.sort_unstable_by_key(|result| Reverse((result.rank, result.count))),
    }
    let start = match cursor {
        None => 0,
        Some((rank, count)) => found.partition_point(|result| match request.order {
            Order::Recent => result.count >= count,
            Order::Rank => (result.rank, result.count) >= (rank, count),
        }),
    };
    let mut results: Vec<Found> = found.into_iter().skip(start).collect();
    // A full page always carries a `next_batch`, even when nothing follows (the next page is then
    // empty): Synapse answers so and clients and Complement rely on it; a short page ends.
    let more = results.len() >= request.limit;
    results.truncate(request.limit);
    let next_batch = match results.last() {
        Some(last) if more => Some(match request.order {
            Order::Recent => format!("r{}", last.count),
            Order::Rank => format!("k{}_{}", last.rank, last.count),
        }),
        _ => None,
    };
    Ok(SearchPage {
        count: total,
        results,
        next_batch,
    })
}

/// Whether a hit passes the requested keys, the filter and the ignore list.
fn wanted(request: &SearchRequest<'_>, ignored: &HashSet<OwnedUserId>, hit: &Hit) -> bool {
    let filter = &request.filter;
    if !request.keys.is_empty() && !request.keys.contains(&hit.search_key) {
        return false;
    }
    if !filter.matches_type(hit.search_key.event_type())
        || !filter.matches_sender(&hit.sender)
        || filter
            .contains_url
            .is_some_and(|wanted| wanted != hit.has_url)
    {
        return false;
    }
    // Ignoring hides messages but never state (spec, "Ignoring Users").
    let ignored_sender = !ignored.is_empty()
        && <&UserId>::try_from(&*hit.sender).is_ok_and(|sender| ignored.contains(sender));
    !(hit.search_key == SearchKey::Body && ignored_sender)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_are_lower_case_unicode_runs_cut_at_a_char_boundary() {
        let split: Vec<String> = words("Hello, WORLD! Größe東京 x_y 42nd").collect();
        assert_eq!(split, ["hello", "world", "größe東京", "x", "y", "42nd"]);
        let long = "é".repeat(40);
        let cut: Vec<String> = words(&long).collect();
        assert_eq!(cut[0].len(), MAX_WORD_BYTES);
        assert!(words("  ...  ").next().is_none());
    }

    #[test]
    fn postings_count_words_of_the_searchable_field_only() {
        let message = serde_json::json!({"body": "a b a", "url": "mxc://x/y"});
        let (counts, flags) = postings(&TimelineEventType::RoomMessage, &message).unwrap();
        assert_eq!(counts["a"], 2);
        assert_eq!(counts["b"], 1);
        assert_eq!(SearchKey::from_flags(flags), SearchKey::Body);
        assert_ne!(flags & FLAG_URL, 0);
        let name = serde_json::json!({"name": "Hall"});
        let (_, flags) = postings(&TimelineEventType::RoomName, &name).unwrap();
        assert_eq!(SearchKey::from_flags(flags), SearchKey::Name);
        assert!(postings(&TimelineEventType::RoomMember, &message).is_none());
        assert!(postings(&TimelineEventType::RoomMessage, &serde_json::json!({})).is_none());
    }

    #[test]
    fn next_batch_tokens_belong_to_their_order() {
        assert_eq!(parse_next_batch("r42", Order::Recent).unwrap(), (0, 42));
        assert_eq!(parse_next_batch("k3_42", Order::Rank).unwrap(), (3, 42));
        for (bad, order) in [
            ("k3_42", Order::Recent),
            ("r42", Order::Rank),
            ("", Order::Recent),
            ("kx_1", Order::Rank),
        ] {
            assert!(parse_next_batch(bad, order).is_err(), "{bad}");
        }
    }
}
