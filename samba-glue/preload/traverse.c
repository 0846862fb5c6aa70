/*
 * traverse.c: walking a database. On a routed database everything is built on
 * rctdb_traverse, which (clustered) visits every record of the cluster once, newest copy.
 */

#include <stdlib.h>
#include <string.h>

#include "preload.h"

struct visit {
	struct routed_db *db;
	tdb_traverse_func fn;
	void *private_data;
};

/* rctdb hands its own context to the callback; the caller expects the handle it holds. */
static int visit_one(struct rctdb_context *ctx, TDB_DATA key, TDB_DATA data, void *private_data)
{
	struct visit *visit = private_data;

	(void)ctx;
	return visit->fn(as_tdb(visit->db), key, data, visit->private_data);
}

static int routed_traverse(struct routed_db *db, tdb_traverse_func fn, void *private_data)
{
	struct rctdb_context *ctx = routed_ctx(db);
	struct visit visit = { db, fn, private_data };

	if (ctx == NULL) {
		return -1;
	}
	if (fn == NULL) {
		return librctdb()->rctdb_traverse(ctx, NULL, NULL);
	}
	return librctdb()->rctdb_traverse(ctx, visit_one, &visit);
}

PUBLIC int tdb_traverse(struct tdb_context *tdb, tdb_traverse_func fn, void *private_data)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_traverse(tdb, fn, private_data);
	}
	return routed_traverse(db, fn, private_data);
}

/* rctdb's traverse works on a copy, so a read-only one is the same traverse. */
PUBLIC int tdb_traverse_read(struct tdb_context *tdb, tdb_traverse_func fn, void *private_data)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_traverse_read(tdb, fn, private_data);
	}
	return routed_traverse(db, fn, private_data);
}

PUBLIC int tdb_traverse_chain(struct tdb_context *tdb, unsigned chain, tdb_traverse_func fn,
			      void *private_data)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_traverse_chain(tdb, chain, fn, private_data);
	}
	return routed_unsupported(db, "tdb_traverse_chain",
				  "a hash chain number means nothing outside one node's file");
}

/*
 * The records in key's hash chain: callers use it for cleanup under key's chain lock, and
 * any set of records sharing one chain is a valid answer. rctdb keeps each record's chain
 * to itself, so the chain visited holds key's record alone (if it exists).
 */
PUBLIC int tdb_traverse_key_chain(struct tdb_context *tdb, TDB_DATA key, tdb_traverse_func fn,
				  void *private_data)
{
	struct routed_db *db = routed_of(tdb);
	struct rctdb_context *ctx;
	TDB_DATA data;

	if (db == NULL) {
		return real_tdb()->tdb_traverse_key_chain(tdb, key, fn, private_data);
	}
	if ((ctx = routed_ctx(db)) == NULL) {
		return -1;
	}
	data = librctdb()->rctdb_fetch(ctx, key);
	if (data.dptr == NULL) {
		return librctdb()->rctdb_error(ctx) == TDB_ERR_NOEXIST ? 0 : -1;
	}
	if (fn != NULL) {
		/* One record: whether fn asks to stop changes nothing. */
		fn(tdb, key, data, private_data);
	}
	free(data.dptr);
	return 1;
}

/* --- tdb_firstkey / tdb_nextkey: a snapshot of the keys, taken by tdb_firstkey. --- */

static void forget_keys(struct routed_db *db)
{
	for (size_t i = 0; i < db->num_keys; i++) {
		free(db->keys[i].dptr);
	}
	free(db->keys);
	db->keys = NULL;
	db->num_keys = 0;
}

static int collect_key(struct tdb_context *tdb, TDB_DATA key, TDB_DATA data, void *private_data)
{
	struct routed_db *db = routed_of(tdb);
	size_t *capacity = private_data;
	TDB_DATA copy = { malloc(key.dsize > 0 ? key.dsize : 1), key.dsize };

	(void)data;
	if (copy.dptr == NULL) {
		return -1;
	}
	if (db->num_keys == *capacity) {
		size_t bigger = *capacity == 0 ? 64 : *capacity * 2;
		TDB_DATA *keys = realloc(db->keys, bigger * sizeof(*keys));

		if (keys == NULL) {
			free(copy.dptr);
			return -1;
		}
		db->keys = keys;
		*capacity = bigger;
	}
	memcpy(copy.dptr, key.dptr, key.dsize);
	db->keys[db->num_keys++] = copy;
	return 0;
}

static int snapshot_keys(struct routed_db *db)
{
	size_t capacity = 0;
	int count;

	forget_keys(db);
	count = routed_traverse(db, collect_key, &capacity);
	if (count >= 0 && (size_t)count != db->num_keys) {
		routed_fail(db, TDB_ERR_OOM, "out of memory listing the keys");
		return -1;
	}
	return count < 0 ? -1 : 0;
}

static TDB_DATA key_copy(struct routed_db *db, size_t at)
{
	TDB_DATA copy = { NULL, 0 };

	if (at >= db->num_keys) {
		db->own_error = TDB_ERR_NOEXIST;
		db->own_error_latest = true;
		strcpy(db->own_errstr, "no more keys");
		return copy;
	}
	copy.dptr = malloc(db->keys[at].dsize > 0 ? db->keys[at].dsize : 1);
	if (copy.dptr == NULL) {
		routed_fail(db, TDB_ERR_OOM, "out of memory copying a key");
		return copy;
	}
	memcpy(copy.dptr, db->keys[at].dptr, db->keys[at].dsize);
	copy.dsize = db->keys[at].dsize;
	return copy;
}

PUBLIC TDB_DATA tdb_firstkey(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_firstkey(tdb);
	}
	if (snapshot_keys(db) != 0) {
		return (TDB_DATA){ NULL, 0 };
	}
	return key_copy(db, 0);
}

static size_t position_of(struct routed_db *db, TDB_DATA key)
{
	for (size_t i = 0; i < db->num_keys; i++) {
		if (db->keys[i].dsize == key.dsize &&
		    (key.dsize == 0 || memcmp(db->keys[i].dptr, key.dptr, key.dsize) == 0)) {
			return i;
		}
	}
	return db->num_keys;
}

PUBLIC TDB_DATA tdb_nextkey(struct tdb_context *tdb, TDB_DATA key)
{
	struct routed_db *db = routed_of(tdb);
	size_t at;

	if (db == NULL) {
		return real_tdb()->tdb_nextkey(tdb, key);
	}
	at = position_of(db, key);
	if (at == db->num_keys) {
		/* Not from our snapshot (a walk began elsewhere): take a new one. */
		if (snapshot_keys(db) != 0) {
			return (TDB_DATA){ NULL, 0 };
		}
		at = position_of(db, key);
	}
	return key_copy(db, at + 1);
}

/* --- Whole-database calls built on the traverse. --- */

PUBLIC int tdb_wipe_all(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);
	struct rctdb_context *ctx;
	int rc = 0;

	if (db == NULL) {
		return real_tdb()->tdb_wipe_all(tdb);
	}
	if (snapshot_keys(db) != 0 || (ctx = routed_ctx(db)) == NULL) {
		return -1;
	}
	for (size_t i = 0; i < db->num_keys; i++) {
		if (librctdb()->rctdb_delete(ctx, db->keys[i]) != 0 &&
		    librctdb()->rctdb_error(ctx) != TDB_ERR_NOEXIST) {
			rc = -1;
		}
	}
	forget_keys(db);
	return rc;
}

struct check {
	int (*check)(TDB_DATA key, TDB_DATA data, void *private_data);
	void *private_data;
	bool failed;
};

static int check_one(struct tdb_context *tdb, TDB_DATA key, TDB_DATA data, void *private_data)
{
	struct check *check = private_data;

	(void)tdb;
	if (check->check(key, data, check->private_data) != 0) {
		check->failed = true;
		return 1;
	}
	return 0;
}

/* The file is rctdbd's to check; here every record is read and shown to `check`. */
PUBLIC int tdb_check(struct tdb_context *tdb,
		     int (*check)(TDB_DATA key, TDB_DATA data, void *private_data),
		     void *private_data)
{
	struct routed_db *db = routed_of(tdb);
	struct check state = { check, private_data, false };

	if (db == NULL) {
		return real_tdb()->tdb_check(tdb, check, private_data);
	}
	if (routed_traverse(db, check != NULL ? check_one : NULL, &state) < 0) {
		return -1;
	}
	if (state.failed) {
		routed_fail(db, TDB_ERR_CORRUPT, "tdb_check: the check function refused a record");
		return -1;
	}
	return 0;
}

struct rescue {
	void (*walk)(TDB_DATA key, TDB_DATA data, void *private_data);
	void *private_data;
};

static int rescue_one(struct tdb_context *tdb, TDB_DATA key, TDB_DATA data, void *private_data)
{
	struct rescue *rescue = private_data;

	(void)tdb;
	rescue->walk(key, data, rescue->private_data);
	return 0;
}

PUBLIC int tdb_rescue(struct tdb_context *tdb,
		      void (*walk)(TDB_DATA key, TDB_DATA data, void *private_data),
		      void *private_data)
{
	struct routed_db *db = routed_of(tdb);
	struct rescue state = { walk, private_data };

	if (db == NULL) {
		return real_tdb()->tdb_rescue(tdb, walk, private_data);
	}
	return routed_traverse(db, walk != NULL ? rescue_one : NULL, &state) < 0 ? -1 : 0;
}
