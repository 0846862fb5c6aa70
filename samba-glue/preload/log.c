/*
 * log.c: the preload's log lines.
 *
 * Each goes to the file RCTDB_PRELOAD_LOG names (every level, with the pid: the place to
 * look when smbd's own log is quiet), and to the log function the caller gave
 * tdb_open_ex (smbd's tdb_wrap_log, so lines land in smbd's log at tdb's levels), or,
 * for errors of a database without one, to stderr.
 */

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "preload.h"

#define LOG_FILE_ENV "RCTDB_PRELOAD_LOG"

static const char *level_name(enum tdb_debug_level level)
{
	switch (level) {
	case TDB_DEBUG_FATAL:
		return "fatal";
	case TDB_DEBUG_ERROR:
		return "error";
	case TDB_DEBUG_WARNING:
		return "warning";
	default:
		return "trace";
	}
}

static void append_to_log_file(const char *line)
{
	const char *path = getenv(LOG_FILE_ENV);
	char full[1200];
	int fd, n;

	if (path == NULL || path[0] == '\0') {
		return;
	}
	fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0644);
	if (fd < 0) {
		return;
	}
	n = snprintf(full, sizeof(full), "[%d] %s\n", (int)getpid(), line);
	if (n > 0) {
		/* One write with O_APPEND: lines of concurrent processes do not interleave. */
		ssize_t ignored = write(fd, full, strnlen(full, sizeof(full)));
		(void)ignored;
	}
	close(fd);
}

void preload_log(struct routed_db *db, enum tdb_debug_level level, const char *fmt, ...)
{
	int saved_errno = errno;
	char text[1024];
	char line[1100];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(text, sizeof(text), fmt, ap);
	va_end(ap);
	snprintf(line, sizeof(line), "rctdb tdb preload: %s%s%s: %s",
		 db != NULL ? db->name : "", db != NULL ? ": " : "", level_name(level), text);

	append_to_log_file(line);
	if (db != NULL && db->log.log_fn != NULL) {
		db->log.log_fn(as_tdb(db), level, "%s\n", line);
	} else if (level <= TDB_DEBUG_ERROR) {
		fprintf(stderr, "%s\n", line);
	}
	errno = saved_errno;
}
