/*
 * records.c: reading, writing and locking records. A routed database's call is the same
 * call on its rctdb context (rctdb's API is tdb's, renamed); the rest are built from
 * those calls.
 */

#include <stdlib.h>
#include <string.h>

#include "preload.h"

PUBLIC TDB_DATA tdb_fetch(struct tdb_context *tdb, TDB_DATA key)
{
	struct routed_db *db = routed_of(tdb);
	struct rctdb_context *ctx;

	if (db == NULL) {
		return real_tdb()->tdb_fetch(tdb, key);
	}
	if ((ctx = routed_ctx(db)) == NULL) {
		return (TDB_DATA){ NULL, 0 };
	}
	return librctdb()->rctdb_fetch(ctx, key);
}

PUBLIC int tdb_parse_record(struct tdb_context *tdb, TDB_DATA key,
			    int (*parser)(TDB_DATA key, TDB_DATA data, void *private_data),
			    void *private_data)
{
	struct routed_db *db = routed_of(tdb);
	struct rctdb_context *ctx;

	if (db == NULL) {
		return real_tdb()->tdb_parse_record(tdb, key, parser, private_data);
	}
	if ((ctx = routed_ctx(db)) == NULL) {
		return -1;
	}
	return librctdb()->rctdb_parse_record(ctx, key, parser, private_data);
}

PUBLIC int tdb_store(struct tdb_context *tdb, TDB_DATA key, TDB_DATA dbuf, int flag)
{
	struct routed_db *db = routed_of(tdb);
	struct rctdb_context *ctx;

	if (db == NULL) {
		return real_tdb()->tdb_store(tdb, key, dbuf, flag);
	}
	if ((ctx = routed_ctx(db)) == NULL) {
		return -1;
	}
	return librctdb()->rctdb_store(ctx, key, dbuf, flag);
}

PUBLIC int tdb_storev(struct tdb_context *tdb, TDB_DATA key, const TDB_DATA *dbufs,
		      int num_dbufs, int flag)
{
	struct routed_db *db = routed_of(tdb);
	struct rctdb_context *ctx;

	if (db == NULL) {
		return real_tdb()->tdb_storev(tdb, key, dbufs, num_dbufs, flag);
	}
	if ((ctx = routed_ctx(db)) == NULL) {
		return -1;
	}
	return librctdb()->rctdb_storev(ctx, key, dbufs, num_dbufs, flag);
}

/* Append: under the chain lock, the old value and the new bytes stored as one record. */
PUBLIC int tdb_append(struct tdb_context *tdb, TDB_DATA key, TDB_DATA new_dbuf)
{
	struct routed_db *db = routed_of(tdb);
	const struct librctdb *rctdb;
	struct rctdb_context *ctx;
	TDB_DATA parts[2];
	int rc;

	if (db == NULL) {
		return real_tdb()->tdb_append(tdb, key, new_dbuf);
	}
	if ((ctx = routed_ctx(db)) == NULL) {
		return -1;
	}
	rctdb = librctdb();
	if (rctdb->rctdb_chainlock(ctx, key) != 0) {
		return -1;
	}
	parts[0] = rctdb->rctdb_fetch(ctx, key);
	if (parts[0].dptr == NULL && rctdb->rctdb_error(ctx) != TDB_ERR_NOEXIST) {
		rctdb->rctdb_chainunlock(ctx, key);
		return -1;
	}
	parts[1] = new_dbuf;
	rc = rctdb->rctdb_storev(ctx, key, parts, 2, TDB_REPLACE);
	free(parts[0].dptr);
	if (rctdb->rctdb_chainunlock(ctx, key) != 0) {
		rc = -1;
	}
	return rc;
}

PUBLIC int tdb_delete(struct tdb_context *tdb, TDB_DATA key)
{
	struct routed_db *db = routed_of(tdb);
	struct rctdb_context *ctx;

	if (db == NULL) {
		return real_tdb()->tdb_delete(tdb, key);
	}
	if ((ctx = routed_ctx(db)) == NULL) {
		return -1;
	}
	return librctdb()->rctdb_delete(ctx, key);
}

/* tdb_exists answers 0 or 1; rctdb's -1 (the record could not be reached) counts as absent,
 * with the error kept for tdb_error. */
PUBLIC int tdb_exists(struct tdb_context *tdb, TDB_DATA key)
{
	struct routed_db *db = routed_of(tdb);
	struct rctdb_context *ctx;

	if (db == NULL) {
		return real_tdb()->tdb_exists(tdb, key);
	}
	if ((ctx = routed_ctx(db)) == NULL) {
		return 0;
	}
	return librctdb()->rctdb_exists(ctx, key) == 1;
}

PUBLIC int tdb_chainlock(struct tdb_context *tdb, TDB_DATA key)
{
	struct routed_db *db = routed_of(tdb);
	struct rctdb_context *ctx;

	if (db == NULL) {
		return real_tdb()->tdb_chainlock(tdb, key);
	}
	if ((ctx = routed_ctx(db)) == NULL) {
		return -1;
	}
	return librctdb()->rctdb_chainlock(ctx, key);
}

PUBLIC int tdb_chainlock_nonblock(struct tdb_context *tdb, TDB_DATA key)
{
	struct routed_db *db = routed_of(tdb);
	struct rctdb_context *ctx;

	if (db == NULL) {
		return real_tdb()->tdb_chainlock_nonblock(tdb, key);
	}
	if ((ctx = routed_ctx(db)) == NULL) {
		return -1;
	}
	return librctdb()->rctdb_chainlock_nonblock(ctx, key);
}

PUBLIC int tdb_chainunlock(struct tdb_context *tdb, TDB_DATA key)
{
	struct routed_db *db = routed_of(tdb);
	struct rctdb_context *ctx;

	if (db == NULL) {
		return real_tdb()->tdb_chainunlock(tdb, key);
	}
	if ((ctx = routed_ctx(db)) == NULL) {
		return -1;
	}
	return librctdb()->rctdb_chainunlock(ctx, key);
}

/* rctdb has one kind of chain lock: a read lock is the write lock, which excludes more
 * but never less. */
PUBLIC int tdb_chainlock_read(struct tdb_context *tdb, TDB_DATA key)
{
	if (routed_of(tdb) == NULL) {
		return real_tdb()->tdb_chainlock_read(tdb, key);
	}
	return tdb_chainlock(tdb, key);
}

PUBLIC int tdb_chainlock_read_nonblock(struct tdb_context *tdb, TDB_DATA key)
{
	if (routed_of(tdb) == NULL) {
		return real_tdb()->tdb_chainlock_read_nonblock(tdb, key);
	}
	return tdb_chainlock_nonblock(tdb, key);
}

PUBLIC int tdb_chainunlock_read(struct tdb_context *tdb, TDB_DATA key)
{
	if (routed_of(tdb) == NULL) {
		return real_tdb()->tdb_chainunlock_read(tdb, key);
	}
	return tdb_chainunlock(tdb, key);
}

/* Marks tell libtdb a lock is held elsewhere (ctdbd's lock helpers); rctdbd does its own. */
PUBLIC int tdb_chainlock_mark(struct tdb_context *tdb, TDB_DATA key)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_chainlock_mark(tdb, key);
	}
	return routed_unsupported(db, "tdb_chainlock_mark", "rctdbd marks its own chain locks");
}

PUBLIC int tdb_chainlock_unmark(struct tdb_context *tdb, TDB_DATA key)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_chainlock_unmark(tdb, key);
	}
	return routed_unsupported(db, "tdb_chainlock_unmark", "rctdbd marks its own chain locks");
}
