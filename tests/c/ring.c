/* The ring from C: plain tdb-style code on a clustered database. RCTDB_SOCKET names this
 * node's rctdbd; rctdb_open attaches NAME through it.
 *
 *   ring incr NAME KEY N    print "ready", wait for a line on stdin, then N increments of
 *                           the 64-bit counter KEY, each under rctdb_chainlock (fetch, +1,
 *                           store, chainunlock); print "done"
 *   ring get NAME KEY       print the counter (0 if there is none)
 */
#include "check.h"

#include <inttypes.h>

static struct rctdb_context *open_db(const char *name)
{
	struct rctdb_context *db = rctdb_open(name, 0, 0, O_RDWR | O_CREAT, 0600);
	if (db == NULL) {
		fprintf(stderr, "ring: cannot open %s: %s\n", name, rctdb_open_error());
		exit(1);
	}
	return db;
}

/* The counter's value; the caller holds the chain lock or does not care. */
static uint64_t counter(struct rctdb_context *db, TDB_DATA key)
{
	TDB_DATA got = rctdb_fetch(db, key);
	if (got.dptr == NULL) {
		CHECK(rctdb_error(db) == TDB_ERR_NOEXIST);
		return 0;
	}
	uint64_t value;
	CHECK(got.dsize == sizeof(value));
	memcpy(&value, got.dptr, sizeof(value));
	free(got.dptr);
	return value;
}

static void fail(struct rctdb_context *db, const char *what)
{
	fprintf(stderr, "ring: %s failed: %s\n", what, rctdb_errorstr(db));
	exit(1);
}

int main(int argc, char **argv)
{
	if (argc == 5 && strcmp(argv[1], "incr") == 0) {
		struct rctdb_context *db = open_db(argv[2]);
		TDB_DATA key = string_data(argv[3]);
		long n = strtol(argv[4], NULL, 10);
		char line[16];
		printf("ready\n");
		fflush(stdout);
		CHECK(fgets(line, sizeof(line), stdin) != NULL);
		for (long i = 0; i < n; i++) {
			if (rctdb_chainlock(db, key) != 0)
				fail(db, "rctdb_chainlock");
			uint64_t value = counter(db, key) + 1;
			TDB_DATA data = { (unsigned char *)&value, sizeof(value) };
			if (rctdb_store(db, key, data, TDB_REPLACE) != 0)
				fail(db, "rctdb_store");
			if (rctdb_chainunlock(db, key) != 0)
				fail(db, "rctdb_chainunlock");
		}
		CHECK(rctdb_close(db) == 0);
		printf("done\n");
		return 0;
	}
	if (argc == 4 && strcmp(argv[1], "get") == 0) {
		struct rctdb_context *db = open_db(argv[2]);
		printf("%" PRIu64 "\n", counter(db, string_data(argv[3])));
		CHECK(rctdb_close(db) == 0);
		return 0;
	}
	fprintf(stderr, "usage: ring incr NAME KEY N | ring get NAME KEY\n");
	return 2;
}
