/*
 * handles.c: the open routed databases, their rctdb contexts, and fork.
 *
 * librctdb's clustered context holds a connection to the node's rctdbd; requests and
 * answers on it are matched by order. A forked child that used its parent's connection
 * would read answers meant for the parent (and the parent the child's), so a child never
 * does: a fork bumps the generation (pthread_atfork), and a context opened in an older
 * generation is closed (which only drops this process's copies of its descriptors, nothing
 * is sent) and opened again before its first use, or at once by tdb_reopen_all, which
 * smbd calls in every child it forks.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "preload.h"

static struct routed_db *open_dbs;
static pthread_mutex_t open_dbs_lock = PTHREAD_MUTEX_INITIALIZER;
static unsigned fork_generation;

/* Keep the list whole across fork: no thread is half way through it when the child
 * starts. */
static void before_fork(void)
{
	pthread_mutex_lock(&open_dbs_lock);
}

static void after_fork_in_parent(void)
{
	pthread_mutex_unlock(&open_dbs_lock);
}

static void after_fork_in_child(void)
{
	__atomic_add_fetch(&fork_generation, 1, __ATOMIC_RELAXED);
	pthread_mutex_unlock(&open_dbs_lock);
}

__attribute__((constructor)) static void watch_forks(void)
{
	pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}

unsigned current_fork_generation(void)
{
	return __atomic_load_n(&fork_generation, __ATOMIC_RELAXED);
}

void routed_register(struct routed_db *db)
{
	pthread_mutex_lock(&open_dbs_lock);
	db->prev = NULL;
	db->next = open_dbs;
	if (open_dbs != NULL) {
		open_dbs->prev = db;
	}
	open_dbs = db;
	pthread_mutex_unlock(&open_dbs_lock);
}

void routed_unregister(struct routed_db *db)
{
	pthread_mutex_lock(&open_dbs_lock);
	if (db->prev != NULL) {
		db->prev->next = db->next;
	} else if (open_dbs == db) {
		open_dbs = db->next;
	}
	if (db->next != NULL) {
		db->next->prev = db->prev;
	}
	db->prev = db->next = NULL;
	pthread_mutex_unlock(&open_dbs_lock);
}

static void set_error(struct routed_db *db, enum TDB_ERROR code, const char *text)
{
	db->own_error = code;
	db->own_error_latest = true;
	snprintf(db->own_errstr, sizeof(db->own_errstr), "%s", text);
}

void routed_fail(struct routed_db *db, enum TDB_ERROR code, const char *fmt, ...)
{
	char text[sizeof(db->own_errstr)];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	set_error(db, code, text);
	preload_log(db, TDB_DEBUG_ERROR, "%s", text);
}

int routed_unsupported(struct routed_db *db, const char *function, const char *why)
{
	routed_fail(db, TDB_ERR_EINVAL, "%s is not supported on a database routed to rctdb: %s",
		    function, why);
	return -1;
}

/* Opens db's rctdb context. `again`: a reopen (after fork), so the first opener already
 * did what TDB_CLEAR_IF_FIRST asks. */
int routed_open_ctx(struct routed_db *db, bool again)
{
	const struct librctdb *rctdb = librctdb();
	int flags = db->rctdb_flags;
	int saved_errno;

	if (rctdb == NULL) {
		routed_fail(db, TDB_ERR_IO, "librctdb.so could not be loaded (see the line before)");
		errno = ENOSYS;
		return -1;
	}
	if (again) {
		flags &= ~TDB_CLEAR_IF_FIRST;
	}
	opening_below++;
	db->ctx = rctdb->rctdb_open(db->name, db->hash_size, flags, db->open_flags, db->mode);
	saved_errno = errno;
	opening_below--;
	if (db->ctx == NULL) {
		routed_fail(db, TDB_ERR_IO, "%s", rctdb->rctdb_open_error());
		errno = saved_errno;
		return -1;
	}
	db->fork_generation = current_fork_generation();
	return 0;
}

void routed_close_ctx(struct routed_db *db)
{
	const struct librctdb *rctdb = librctdb();

	if (db->ctx != NULL && rctdb != NULL && rctdb->rctdb_close(db->ctx) != 0) {
		preload_log(db, TDB_DEBUG_WARNING, "closing its rctdb context failed (%s)",
			    strerror(errno));
	}
	db->ctx = NULL;
}

struct rctdb_context *routed_ctx(struct routed_db *db)
{
	db->own_error_latest = false;
	if (__builtin_expect(db->ctx != NULL && db->fork_generation == current_fork_generation(), 1)) {
		return db->ctx;
	}
	/* A child that did not call tdb_reopen_all, or a reopen that failed: (re)open now. */
	routed_close_ctx(db);
	if (routed_open_ctx(db, true) != 0) {
		return NULL;
	}
	preload_log(db, TDB_DEBUG_TRACE, "opened again in process %d, with its own rctdbd connection",
		    (int)getpid());
	return db->ctx;
}

/* tdb_reopen_all: every routed database gets a context of its own in this process. The
 * old contexts close before libtdb reopens its files, since librctdb's files are libtdb's
 * too, and libtdb refuses to open a file twice in one process. */
int routed_reopen_all(int parent_longlived)
{
	int rc = 0, reopened = 0;

	pthread_mutex_lock(&open_dbs_lock);
	for (struct routed_db *db = open_dbs; db != NULL; db = db->next) {
		routed_close_ctx(db);
	}
	if (real_tdb()->tdb_reopen_all(parent_longlived) != 0) {
		rc = -1;
	}
	for (struct routed_db *db = open_dbs; db != NULL; db = db->next) {
		if (routed_open_ctx(db, true) != 0) {
			rc = -1;
		} else {
			reopened++;
		}
	}
	pthread_mutex_unlock(&open_dbs_lock);
	if (reopened > 0) {
		preload_log(NULL, TDB_DEBUG_TRACE, "tdb_reopen_all in process %d: %d routed database(s) "
			    "reopened, each with its own rctdbd connection", (int)getpid(), reopened);
	}
	return rc;
}
