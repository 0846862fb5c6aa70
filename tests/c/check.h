/* Tiny assertion helpers shared by the C test programs. */
#ifndef RCTDB_TEST_CHECK_H
#define RCTDB_TEST_CHECK_H

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#ifndef USE_LIBTDB
#include "rctdb.h"
#endif

#define CHECK(cond)                                                                     \
	do {                                                                            \
		if (!(cond)) {                                                          \
			fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
			exit(1);                                                        \
		}                                                                       \
	} while (0)

/* The call failed with this tdb error code and its text mentions `needle`. */
#define CHECK_ERR(db, code, needle)                                                     \
	do {                                                                            \
		const char *text_ = rctdb_errorstr(db);                                 \
		if (rctdb_error(db) != (code) || strstr(text_, (needle)) == NULL) {     \
			fprintf(stderr, "%s:%d: expected error %d mentioning \"%s\", got %d: %s\n", \
				__FILE__, __LINE__, (int)(code), (needle), (int)rctdb_error(db), text_); \
			exit(1);                                                        \
		}                                                                       \
	} while (0)

/* rctdb_open failed with this errno and its text mentions `needle`. */
#define CHECK_OPEN_FAILED(db, err, needle)                                              \
	do {                                                                            \
		int errno_ = errno;                                                     \
		const char *text_ = rctdb_open_error();                                 \
		if ((db) != NULL || errno_ != (err) || strstr(text_, (needle)) == NULL) { \
			fprintf(stderr, "%s:%d: expected open failure errno %d mentioning \"%s\", got %p errno %d: %s\n", \
				__FILE__, __LINE__, (err), (needle), (void *)(db), errno_, text_); \
			exit(1);                                                        \
		}                                                                       \
	} while (0)

static inline TDB_DATA string_data(const char *s)
{
	TDB_DATA d = { (unsigned char *)s, strlen(s) };
	return d;
}

static inline int data_equals(TDB_DATA d, const char *s)
{
	return d.dptr != NULL && d.dsize == strlen(s) && memcmp(d.dptr, s, d.dsize) == 0;
}

/* dir + "/" + name, in a static buffer per call site's choice. */
static inline const char *join(char *buf, size_t len, const char *dir, const char *name)
{
	snprintf(buf, len, "%s/%s", dir, name);
	return buf;
}

#endif
