/*
 * info.c: errors, names, flags, sequence numbers, logging, and the maintenance calls
 * whose work on a routed database is rctdbd's.
 */

#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "preload.h"

/* libtdb's hash size when the caller passes 0. */
#define DEFAULT_HASH_SIZE 131

PUBLIC enum TDB_ERROR tdb_error(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_error(tdb);
	}
	if (db->own_error_latest || db->ctx == NULL) {
		return db->own_error;
	}
	return librctdb()->rctdb_error(db->ctx);
}

PUBLIC const char *tdb_errorstr(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_errorstr(tdb);
	}
	if (db->own_error_latest || db->ctx == NULL) {
		return db->own_error == TDB_SUCCESS ? "Success" : db->own_errstr;
	}
	return librctdb()->rctdb_errorstr(db->ctx);
}

PUBLIC const char *tdb_name(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	return db == NULL ? real_tdb()->tdb_name(tdb) : db->name;
}

PUBLIC int tdb_fd(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	return db == NULL ? real_tdb()->tdb_fd(tdb) : db->marker_fd;
}

PUBLIC int tdb_get_flags(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	return db == NULL ? real_tdb()->tdb_get_flags(tdb) : db->tdb_flags;
}

/* Flags a caller adds or removes later (TDB_NOSYNC, TDB_SEQNUM...) change nothing in
 * rctdb; tdb_get_flags shows them. */
PUBLIC void tdb_add_flags(struct tdb_context *tdb, unsigned flag)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		real_tdb()->tdb_add_flags(tdb, flag);
		return;
	}
	db->tdb_flags |= (int)flag;
	preload_log(db, TDB_DEBUG_TRACE, "tdb_add_flags(%#x) is only recorded", flag);
}

PUBLIC void tdb_remove_flags(struct tdb_context *tdb, unsigned flag)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		real_tdb()->tdb_remove_flags(tdb, flag);
		return;
	}
	db->tdb_flags &= ~(int)flag;
	preload_log(db, TDB_DEBUG_TRACE, "tdb_remove_flags(%#x) is only recorded", flag);
}

PUBLIC int tdb_hash_size(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_hash_size(tdb);
	}
	return db->hash_size > 0 ? db->hash_size : DEFAULT_HASH_SIZE;
}

/* No file of the caller's is mapped: the node's file is rctdb's. */
PUBLIC size_t tdb_map_size(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	return db == NULL ? real_tdb()->tdb_map_size(tdb) : 0;
}

PUBLIC int tdb_freelist_size(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	return db == NULL ? real_tdb()->tdb_freelist_size(tdb) : 0;
}

PUBLIC int tdb_get_seqnum(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);
	struct rctdb_context *ctx;

	if (db == NULL) {
		return real_tdb()->tdb_get_seqnum(tdb);
	}
	ctx = routed_ctx(db);
	return ctx == NULL ? 0 : librctdb()->rctdb_get_seqnum(ctx);
}

/* rctdb takes TDB_SEQNUM at open: the context is opened again with it. */
PUBLIC void tdb_enable_seqnum(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		real_tdb()->tdb_enable_seqnum(tdb);
		return;
	}
	if ((db->rctdb_flags & TDB_SEQNUM) != 0) {
		return;
	}
	db->tdb_flags |= TDB_SEQNUM;
	db->rctdb_flags |= TDB_SEQNUM;
	routed_close_ctx(db);
	routed_open_ctx(db, true);
}

PUBLIC void tdb_increment_seqnum_nonblock(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		real_tdb()->tdb_increment_seqnum_nonblock(tdb);
		return;
	}
	preload_log(db, TDB_DEBUG_WARNING,
		    "tdb_increment_seqnum_nonblock does nothing on a routed database: rctdb counts "
		    "its own changes");
}

/* Dead records are the file's business, and the file is rctdb's. */
PUBLIC void tdb_set_max_dead(struct tdb_context *tdb, int max_dead)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		real_tdb()->tdb_set_max_dead(tdb, max_dead);
	}
}

/* rctdb bounds every wait itself (RCTDB_MIGRATE_TIMEOUT_MS, then TDB_ERR_LOCK_TIMEOUT), so an
 * alarm flag has nothing to interrupt. */
PUBLIC void tdb_setalarm_sigptr(struct tdb_context *tdb, volatile sig_atomic_t *sigptr)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		real_tdb()->tdb_setalarm_sigptr(tdb, sigptr);
	}
}

PUBLIC void tdb_set_logging_function(struct tdb_context *tdb,
				     const struct tdb_logging_context *log_ctx)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		real_tdb()->tdb_set_logging_function(tdb, log_ctx);
		return;
	}
	db->log = log_ctx != NULL ? *log_ctx : (struct tdb_logging_context){ NULL, NULL };
}

PUBLIC void tdb_logging_function(struct tdb_context *tdb, tdb_log_func fn)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		real_tdb()->tdb_logging_function(tdb, fn);
		return;
	}
	db->log.log_fn = fn;
}

PUBLIC tdb_log_func tdb_log_fn(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	return db == NULL ? real_tdb()->tdb_log_fn(tdb) : db->log.log_fn;
}

PUBLIC void *tdb_get_logging_private(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	return db == NULL ? real_tdb()->tdb_get_logging_private(tdb) : db->log.log_private;
}

/* --- Maintenance and debugging of the file: rctdbd's file, rctdb's tools. --- */

PUBLIC int tdb_repack(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_repack(tdb);
	}
	preload_log(db, TDB_DEBUG_TRACE, "tdb_repack: nothing to do, rctdb owns the file");
	return 0;
}

PUBLIC void tdb_dump_all(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		real_tdb()->tdb_dump_all(tdb);
		return;
	}
	printf("%s is routed to rctdb: `rctdb dump %s` shows its records\n", db->name,
	       strrchr(db->name, '/') != NULL ? strrchr(db->name, '/') + 1 : db->name);
}

PUBLIC int tdb_printfreelist(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_printfreelist(tdb);
	}
	printf("%s is routed to rctdb: its file and free list are rctdb's\n", db->name);
	return 0;
}

PUBLIC int tdb_validate_freelist(struct tdb_context *tdb, int *pnum_entries)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_validate_freelist(tdb, pnum_entries);
	}
	if (pnum_entries != NULL) {
		*pnum_entries = 0;
	}
	return 0;
}

PUBLIC char *tdb_summary(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);
	char *text = NULL;
	int records;

	if (db == NULL) {
		return real_tdb()->tdb_summary(tdb);
	}
	records = tdb_traverse(tdb, NULL, NULL);
	if (asprintf(&text, "%s: routed to rctdb, %d records\n", db->name, records) < 0) {
		return NULL;
	}
	return text;
}

/* --- No database argument: libtdb's. --- */

PUBLIC unsigned int tdb_jenkins_hash(TDB_DATA *key)
{
	return real_tdb()->tdb_jenkins_hash(key);
}

PUBLIC bool tdb_runtime_check_for_robust_mutexes(void)
{
	return real_tdb()->tdb_runtime_check_for_robust_mutexes();
}
