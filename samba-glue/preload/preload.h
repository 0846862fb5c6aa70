/*
 * preload.h: what the files of the tdb preload share.
 *
 * The preload exports every function libtdb.so.1 exports, under the same names. A
 * database whose name RCTDB_SAMBA_DBS lists is "routed": tdb_open returns a
 * struct routed_db (cast to struct tdb_context *) whose calls go to librctdb. Every
 * other database is libtdb's own struct tdb_context, handed over untouched, and its
 * calls are forwarded to libtdb. routed_of() tells the two apart by the magic number
 * at the start of a routed handle: libtdb's context starts with a pointer, which can
 * never equal that (non-canonical) value.
 *
 * libtdb calls its own exported functions through its PLT (tdb_chainunlock calls
 * tdb_unlock, tdb_open calls tdb_open_ex...), and the preload interposes those too, so
 * every entry point must pass a context it did not make straight through.
 */

#ifndef RCTDB_PRELOAD_H
#define RCTDB_PRELOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <signal.h>
#include <sys/types.h>
#include <tdb.h>

#include "rctdb.h"

/* The symbols a process resolves to us. Everything else stays inside the library. */
#define PUBLIC __attribute__((visibility("default")))

/* Exported by libtdb.so.1 but declared only in its private header. */
int tdb_lock_nonblock(struct tdb_context *tdb, int list, int ltype);
int tdb_unlock(struct tdb_context *tdb, int list, int ltype);
int tdb_transaction_write_lock_mark(struct tdb_context *tdb);
int tdb_transaction_write_lock_unmark(struct tdb_context *tdb);

/* Every function libtdb.so.1 (1.4.x) exports: the preload defines each one. */
#define LIBTDB_FUNCTIONS(X)                                                                    \
	X(tdb_add_flags) X(tdb_append) X(tdb_chainlock) X(tdb_chainlock_mark)                    \
	X(tdb_chainlock_nonblock) X(tdb_chainlock_read) X(tdb_chainlock_read_nonblock)           \
	X(tdb_chainlock_unmark) X(tdb_chainunlock) X(tdb_chainunlock_read) X(tdb_check)          \
	X(tdb_close) X(tdb_delete) X(tdb_dump_all) X(tdb_enable_seqnum) X(tdb_error)             \
	X(tdb_errorstr) X(tdb_exists) X(tdb_fd) X(tdb_fetch) X(tdb_firstkey)                     \
	X(tdb_freelist_size) X(tdb_get_flags) X(tdb_get_logging_private) X(tdb_get_seqnum)       \
	X(tdb_hash_size) X(tdb_increment_seqnum_nonblock) X(tdb_jenkins_hash)                    \
	X(tdb_lock_nonblock) X(tdb_lockall) X(tdb_lockall_mark) X(tdb_lockall_nonblock)          \
	X(tdb_lockall_read) X(tdb_lockall_read_nonblock) X(tdb_lockall_unmark) X(tdb_log_fn)     \
	X(tdb_logging_function) X(tdb_map_size) X(tdb_name) X(tdb_nextkey) X(tdb_open)           \
	X(tdb_open_ex) X(tdb_parse_record) X(tdb_printfreelist) X(tdb_remove_flags)              \
	X(tdb_reopen) X(tdb_reopen_all) X(tdb_repack) X(tdb_rescue)                              \
	X(tdb_runtime_check_for_robust_mutexes) X(tdb_set_logging_function)                      \
	X(tdb_set_max_dead) X(tdb_setalarm_sigptr) X(tdb_store) X(tdb_storev) X(tdb_summary)     \
	X(tdb_transaction_active) X(tdb_transaction_cancel) X(tdb_transaction_commit)            \
	X(tdb_transaction_prepare_commit) X(tdb_transaction_start)                               \
	X(tdb_transaction_start_nonblock) X(tdb_transaction_write_lock_mark)                     \
	X(tdb_transaction_write_lock_unmark) X(tdb_traverse) X(tdb_traverse_chain)               \
	X(tdb_traverse_key_chain) X(tdb_traverse_read) X(tdb_unlock) X(tdb_unlockall)            \
	X(tdb_unlockall_read) X(tdb_validate_freelist) X(tdb_wipe_all)

/* The librctdb functions the routed side uses (include/rctdb.h). */
#define LIBRCTDB_FUNCTIONS(X)                                                                  \
	X(rctdb_open) X(rctdb_open_error) X(rctdb_close) X(rctdb_fetch) X(rctdb_parse_record)    \
	X(rctdb_store) X(rctdb_storev) X(rctdb_delete) X(rctdb_exists) X(rctdb_chainlock)        \
	X(rctdb_chainlock_nonblock) X(rctdb_chainunlock) X(rctdb_traverse) X(rctdb_get_seqnum)   \
	X(rctdb_error) X(rctdb_errorstr)

#define POINTER_TO(name) __typeof__(name) *name;
struct real_libtdb {
	LIBTDB_FUNCTIONS(POINTER_TO)
};
struct librctdb {
	LIBRCTDB_FUNCTIONS(POINTER_TO)
};
#undef POINTER_TO

/* real.c: libtdb.so.1 (loaded at first use; a process without it is aborted with a
 * message, as the dynamic linker would) and librctdb.so (loaded at the first routed
 * open; NULL, with the reason logged, if it cannot be). */
extern struct real_libtdb real_tdb_table;
extern bool real_tdb_loaded;
void real_tdb_load(void);
static inline const struct real_libtdb *real_tdb(void)
{
	if (__builtin_expect(!real_tdb_loaded, 0)) {
		real_tdb_load();
	}
	return &real_tdb_table;
}
const struct librctdb *librctdb(void);

/* routing.c: whether RCTDB_SAMBA_DBS routes the database at `name` to rctdb. */
bool routing_wants(const char *name, int tdb_flags);

/* A routed database: what tdb_open handed the caller. */
#define ROUTED_MAGIC UINT64_C(0x8c7d5242445450ce) /* not a canonical x86-64 address */

struct routed_db {
	uint64_t magic; /* ROUTED_MAGIC while open: first, see routed_of() */
	struct rctdb_context *ctx; /* NULL once a reopen failed */
	unsigned fork_generation; /* of the process that opened ctx */

	/* The open as the caller asked for it, for reopening after fork. */
	char *name;
	int hash_size;
	int tdb_flags; /* as the caller sees them (tdb_get_flags) */
	int rctdb_flags; /* what rctdb_open gets */
	int open_flags;
	mode_t mode;

	int marker_fd; /* tdb_fd: the caller's path, for fstat (dbwrap's db id) */
	struct tdb_logging_context log; /* the caller's, for our log lines */

	/* An error the preload itself reported, newer than rctdb's last one if set. */
	bool own_error_latest;
	enum TDB_ERROR own_error;
	char own_errstr[512];

	/* tdb_firstkey's snapshot of the keys, which tdb_nextkey walks. */
	TDB_DATA *keys;
	size_t num_keys;

	struct routed_db *prev, *next;
};

static inline struct routed_db *routed_of(struct tdb_context *tdb)
{
	uint64_t magic;

	if (tdb == NULL) {
		return NULL;
	}
	/* Both kinds of context are at least 8 bytes: reading the first word is safe. */
	__builtin_memcpy(&magic, tdb, sizeof(magic));
	return magic == ROUTED_MAGIC ? (struct routed_db *)tdb : NULL;
}

static inline struct tdb_context *as_tdb(struct routed_db *db)
{
	return (struct tdb_context *)db;
}

/* handles.c */
void routed_register(struct routed_db *db);
void routed_unregister(struct routed_db *db);
unsigned current_fork_generation(void);
int routed_open_ctx(struct routed_db *db, bool again);
void routed_close_ctx(struct routed_db *db);
/* tdb_reopen_all: libtdb's databases and every routed one. */
int routed_reopen_all(int parent_longlived);
/* The rctdb context, reopened first if this process is a child of the one that opened it
 * (a child must not talk on its parent's rctdbd connection); NULL with the error set if
 * it cannot be. Clears the preload's own error: what fails next is rctdb's. */
struct rctdb_context *routed_ctx(struct routed_db *db);
/* Fails a call on a routed db: keeps code and message for tdb_error/tdb_errorstr, logs. */
void routed_fail(struct routed_db *db, enum TDB_ERROR code, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
/* A call that has no rctdb equivalent: fails with TDB_ERR_EINVAL and a log line. */
int routed_unsupported(struct routed_db *db, const char *function, const char *why);

/* log.c: a line to RCTDB_PRELOAD_LOG (if set) and to the database's tdb log function
 * (or stderr without one) at `level`. */
void preload_log(struct routed_db *db, enum tdb_debug_level level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));

/* While set, tdb_open/tdb_open_ex route nothing: librctdb is opening its own files (its
 * node file of locking.tdb is called locking.tdb too), or libtdb's tdb_open is calling
 * tdb_open_ex. */
extern __thread int opening_below;

#endif /* RCTDB_PRELOAD_H */
