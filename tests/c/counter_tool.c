/* One tool, built twice: against rctdb, and with -DUSE_LIBTDB against libtdb itself, which
 * shows that tdb code ports by renaming tdb_ to rctdb_. The interop tests run both on one
 * file.
 *
 *   counter_tool write PATH N              store key<i> = value<i>, i < N, in a new database
 *   counter_tool check PATH KEY VALUE N    KEY<i> = VALUE<i> for i < N, and nothing else
 *   counter_tool incr PATH KEY N           print "ready", wait for a byte on stdin, then N
 *                                          increments of the decimal counter KEY, each under
 *                                          the chain lock
 *   counter_tool get PATH KEY              print the value of KEY
 */
#ifdef USE_LIBTDB
#include <sys/types.h>
#include <stdint.h>
#include <stdbool.h>
#include <fcntl.h>
#include <tdb.h>
#define rctdb_context tdb_context
#define rctdb_open tdb_open
#define rctdb_close tdb_close
#define rctdb_fetch tdb_fetch
#define rctdb_store tdb_store
#define rctdb_traverse tdb_traverse
#define rctdb_chainlock tdb_chainlock
#define rctdb_chainunlock tdb_chainunlock
#define rctdb_errorstr tdb_errorstr
#define rctdb_open_error() strerror(errno)
#define FLAVOUR "libtdb"
#else
#define FLAVOUR "rctdb"
#endif

#include "check.h"

static struct rctdb_context *open_db(const char *path, int flags)
{
	struct rctdb_context *db = rctdb_open(path, 0, 0, flags, 0600);
	if (db == NULL) {
		fprintf(stderr, FLAVOUR ": cannot open %s: %s\n", path, rctdb_open_error());
		exit(1);
	}
	return db;
}

static TDB_DATA numbered(char *buf, size_t len, const char *prefix, int i)
{
	snprintf(buf, len, "%s%d", prefix, i);
	return string_data(buf);
}

static int write_records(const char *path, int n)
{
	struct rctdb_context *db = open_db(path, O_RDWR | O_CREAT);
	char k[64], v[64];
	for (int i = 0; i < n; i++) {
		TDB_DATA key = numbered(k, sizeof(k), "key", i);
		CHECK(rctdb_store(db, key, numbered(v, sizeof(v), "value", i), TDB_INSERT) == 0);
	}
	CHECK(rctdb_close(db) == 0);
	return 0;
}

static int check_records(const char *path, const char *key_prefix, const char *value_prefix, int n)
{
	struct rctdb_context *db = open_db(path, O_RDWR);
	char k[64], v[64];
	for (int i = 0; i < n; i++) {
		TDB_DATA got = rctdb_fetch(db, numbered(k, sizeof(k), key_prefix, i));
		numbered(v, sizeof(v), value_prefix, i);
		if (!data_equals(got, v)) {
			fprintf(stderr, FLAVOUR ": %s is not %s\n", k, v);
			return 1;
		}
		free(got.dptr);
	}
	CHECK(rctdb_traverse(db, NULL, NULL) == n);
	CHECK(rctdb_close(db) == 0);
	printf(FLAVOUR ": %d records ok\n", n);
	return 0;
}

static int increment(const char *path, const char *name, int n)
{
	struct rctdb_context *db = open_db(path, O_RDWR | O_CREAT);
	TDB_DATA key = string_data(name);
	/* Say we are ready, then start when the test says so: all the processes overlap. */
	printf("ready\n");
	fflush(stdout);
	CHECK(getchar() != EOF);
	for (int i = 0; i < n; i++) {
		char text[32] = "0";
		CHECK(rctdb_chainlock(db, key) == 0);
		TDB_DATA old = rctdb_fetch(db, key);
		if (old.dptr != NULL) {
			CHECK(old.dsize < sizeof(text));
			memcpy(text, old.dptr, old.dsize);
			text[old.dsize] = '\0';
			free(old.dptr);
		}
		snprintf(text, sizeof(text), "%ld", strtol(text, NULL, 10) + 1);
		if (rctdb_store(db, key, string_data(text), TDB_REPLACE) != 0) {
			fprintf(stderr, FLAVOUR ": store: %s\n", rctdb_errorstr(db));
			return 1;
		}
		CHECK(rctdb_chainunlock(db, key) == 0);
	}
	CHECK(rctdb_close(db) == 0);
	return 0;
}

static int get(const char *path, const char *name)
{
	struct rctdb_context *db = open_db(path, O_RDWR);
	TDB_DATA got = rctdb_fetch(db, string_data(name));
	CHECK(got.dptr != NULL);
	printf("%.*s\n", (int)got.dsize, (const char *)got.dptr);
	free(got.dptr);
	CHECK(rctdb_close(db) == 0);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 4 && strcmp(argv[1], "write") == 0) {
		return write_records(argv[2], atoi(argv[3]));
	}
	if (argc == 6 && strcmp(argv[1], "check") == 0) {
		return check_records(argv[2], argv[3], argv[4], atoi(argv[5]));
	}
	if (argc == 5 && strcmp(argv[1], "incr") == 0) {
		return increment(argv[2], argv[3], atoi(argv[4]));
	}
	if (argc == 4 && strcmp(argv[1], "get") == 0) {
		return get(argv[2], argv[3]);
	}
	fprintf(stderr, "usage: see the comment at the top of counter_tool.c\n");
	return 2;
}
