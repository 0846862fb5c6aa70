/*
 * open.c: tdb_open, tdb_open_ex, tdb_close, tdb_reopen, tdb_reopen_all.
 *
 * A routed open keeps the caller's arguments (for reopening in a forked child) and
 * passes rctdb what it can use:
 *   TDB_MUTEX_LOCKING  dropped: rctdb's files use fcntl chain locks (rctdbd's lock
 *                      waiters need them), and smbd asks for mutexes on every
 *                      CLEAR_IF_FIRST database.
 *   TDB_CLEAR_IF_FIRST dropped when clustered: rctdbd owns the file and empties a
 *                      volatile database when the cluster first attaches it; a process
 *                      must not wipe the cluster's records because it is the first on its
 *                      node. Kept for a local (unclustered) rctdb file, where libtdb does
 *                      it, except when reopening in a child (the first opener did).
 *   hash_size, hash_fn the file's layout is rctdb's (rctdbd's when clustered).
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "preload.h"

__thread int opening_below;

/*
 * tdb_fd of a routed database: a descriptor of the path the caller named, opened
 * read-only (created empty if the caller asked for O_CREAT and the clustered file lives
 * elsewhere). Samba's dbwrap fstat()s it for the database id that tags its change
 * notifications, which must be the same in every process of the node: the inode of one
 * path is. Nothing is ever read from or written to it.
 */
static int open_marker(struct routed_db *db)
{
	int fd = open(db->name, O_RDONLY | O_CLOEXEC);

	if (fd < 0 && errno == ENOENT && (db->open_flags & O_CREAT) != 0) {
		fd = open(db->name, O_RDONLY | O_CREAT | O_CLOEXEC, db->mode);
	}
	if (fd < 0) {
		preload_log(db, TDB_DEBUG_WARNING, "tdb_fd will be -1: cannot open %s (%s)", db->name,
			    strerror(errno));
	}
	return fd;
}

static void routed_free(struct routed_db *db)
{
	for (size_t i = 0; i < db->num_keys; i++) {
		free(db->keys[i].dptr);
	}
	free(db->keys);
	free(db->name);
	db->magic = 0;
	free(db);
}

static struct tdb_context *routed_open(const char *name, int hash_size, int tdb_flags,
				       int open_flags, mode_t mode,
				       const struct tdb_logging_context *log_ctx)
{
	const char *socket = getenv("RCTDB_SOCKET");
	struct routed_db *db = calloc(1, sizeof(*db));
	int saved_errno;

	if (db == NULL || (db->name = strdup(name)) == NULL) {
		free(db);
		errno = ENOMEM;
		return NULL;
	}
	db->magic = ROUTED_MAGIC;
	db->marker_fd = -1;
	db->hash_size = hash_size;
	db->tdb_flags = tdb_flags & ~TDB_MUTEX_LOCKING;
	db->rctdb_flags = db->tdb_flags;
	if (socket != NULL) {
		db->rctdb_flags &= ~TDB_CLEAR_IF_FIRST;
	}
	db->open_flags = open_flags;
	db->mode = mode;
	if (log_ctx != NULL) {
		db->log = *log_ctx;
	}
	if (routed_open_ctx(db, false) != 0) {
		saved_errno = errno;
		routed_free(db);
		errno = saved_errno;
		return NULL;
	}
	db->marker_fd = open_marker(db);
	routed_register(db);
	preload_log(db, TDB_DEBUG_TRACE, "routed to rctdb (%s%s)",
		    socket != NULL ? "clustered, RCTDB_SOCKET=" : "unclustered: a local rctdb file",
		    socket != NULL ? socket : "");
	return as_tdb(db);
}

PUBLIC struct tdb_context *tdb_open_ex(const char *name, int hash_size, int tdb_flags,
				       int open_flags, mode_t mode,
				       const struct tdb_logging_context *log_ctx,
				       tdb_hash_func hash_fn)
{
	struct tdb_context *tdb;

	if (opening_below == 0 && routing_wants(name, tdb_flags)) {
		return routed_open(name, hash_size, tdb_flags, open_flags, mode, log_ctx);
	}
	opening_below++;
	tdb = real_tdb()->tdb_open_ex(name, hash_size, tdb_flags, open_flags, mode, log_ctx,
				      hash_fn);
	opening_below--;
	return tdb;
}

PUBLIC struct tdb_context *tdb_open(const char *name, int hash_size, int tdb_flags,
				    int open_flags, mode_t mode)
{
	struct tdb_context *tdb;

	if (opening_below == 0 && routing_wants(name, tdb_flags)) {
		return routed_open(name, hash_size, tdb_flags, open_flags, mode, NULL);
	}
	opening_below++;
	tdb = real_tdb()->tdb_open(name, hash_size, tdb_flags, open_flags, mode);
	opening_below--;
	return tdb;
}

PUBLIC int tdb_close(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);
	const struct librctdb *rctdb;
	int rc = 0;

	if (db == NULL) {
		return real_tdb()->tdb_close(tdb);
	}
	routed_unregister(db);
	rctdb = librctdb();
	/* rctdb's context first: with an unclustered rctdb the marker is its file, and closing
	 * any descriptor of a file drops the process's fcntl locks on it. */
	if (db->ctx != NULL && rctdb != NULL && rctdb->rctdb_close(db->ctx) != 0) {
		rc = -1;
	}
	if (db->marker_fd >= 0) {
		close(db->marker_fd);
	}
	routed_free(db);
	return rc;
}

PUBLIC int tdb_reopen(struct tdb_context *tdb)
{
	struct routed_db *db = routed_of(tdb);

	if (db == NULL) {
		return real_tdb()->tdb_reopen(tdb);
	}
	routed_close_ctx(db);
	return routed_open_ctx(db, true);
}

PUBLIC int tdb_reopen_all(int parent_longlived)
{
	return routed_reopen_all(parent_longlived);
}
