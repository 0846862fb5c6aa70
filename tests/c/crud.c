/* Create, read, update, delete through the C API, with every store flag. Usage: crud DIR */
#include "check.h"

static int record_length(TDB_DATA key, TDB_DATA data, void *private_data)
{
	(void)key;
	*(size_t *)private_data = data.dsize;
	return 42;
}

int main(int argc, char **argv)
{
	char path[4096];
	CHECK(argc == 2);
	join(path, sizeof(path), argv[1], "crud.tdb");

	struct rctdb_context *db = rctdb_open(path, 0, TDB_SEQNUM, O_RDWR | O_CREAT, 0600);
	CHECK(db != NULL);
	CHECK(strcmp(rctdb_open_error(), "") == 0);
	TDB_DATA key = string_data("greeting");

	/* Absent. */
	TDB_DATA got = rctdb_fetch(db, key);
	CHECK(got.dptr == NULL && got.dsize == 0);
	CHECK_ERR(db, TDB_ERR_NOEXIST, "no record");
	CHECK(rctdb_exists(db, key) == 0);

	/* Insert, then insert again. */
	int seq = rctdb_get_seqnum(db);
	CHECK(rctdb_store(db, key, string_data("hello"), TDB_INSERT) == 0);
	CHECK(rctdb_get_seqnum(db) > seq);
	CHECK(rctdb_exists(db, key) == 1);
	got = rctdb_fetch(db, key);
	CHECK(data_equals(got, "hello"));
	free(got.dptr);
	CHECK(rctdb_store(db, key, string_data("other"), TDB_INSERT) == -1);
	CHECK_ERR(db, TDB_ERR_EXISTS, "TDB_INSERT");

	/* Modify and replace; 0 is tdb's old spelling of replace. */
	CHECK(rctdb_store(db, key, string_data("hello, world"), TDB_MODIFY) == 0);
	CHECK(rctdb_store(db, string_data("absent"), string_data("x"), TDB_MODIFY) == -1);
	CHECK_ERR(db, TDB_ERR_NOEXIST, "TDB_MODIFY");
	CHECK(rctdb_store(db, string_data("zero"), string_data("flag 0"), 0) == 0);
	CHECK(rctdb_store(db, string_data("zero"), string_data("replaced"), TDB_REPLACE) == 0);
	got = rctdb_fetch(db, string_data("zero"));
	CHECK(data_equals(got, "replaced"));
	free(got.dptr);

	/* parse_record sees the data in place and returns the parser's result. */
	size_t length = 0;
	CHECK(rctdb_parse_record(db, key, record_length, &length) == 42);
	CHECK(length == strlen("hello, world"));
	CHECK(rctdb_parse_record(db, string_data("absent"), record_length, &length) == -1);
	CHECK_ERR(db, TDB_ERR_NOEXIST, "no record");

	/* storev joins its parts; an empty part and an empty value are fine. */
	TDB_DATA parts[3] = { string_data("ab"), { NULL, 0 }, string_data("cd") };
	CHECK(rctdb_storev(db, string_data("joined"), parts, 3, TDB_REPLACE) == 0);
	got = rctdb_fetch(db, string_data("joined"));
	CHECK(data_equals(got, "abcd"));
	free(got.dptr);
	TDB_DATA empty = { NULL, 0 };
	CHECK(rctdb_store(db, string_data("empty"), empty, TDB_INSERT) == 0);
	got = rctdb_fetch(db, string_data("empty"));
	CHECK(got.dptr != NULL && got.dsize == 0);
	free(got.dptr);

	/* Delete, then delete again. */
	CHECK(rctdb_delete(db, key) == 0);
	CHECK(rctdb_exists(db, key) == 0);
	CHECK(rctdb_delete(db, key) == -1);
	CHECK_ERR(db, TDB_ERR_NOEXIST, "no record");

	/* Chain locks: fetch and store stay allowed under the lock. */
	CHECK(rctdb_chainlock(db, key) == 0);
	CHECK(rctdb_store(db, key, string_data("locked"), TDB_REPLACE) == 0);
	CHECK(rctdb_chainunlock(db, key) == 0);
	CHECK(rctdb_chainunlock(db, key) == -1);
	CHECK_ERR(db, TDB_ERR_LOCK, "does not hold");
	CHECK(rctdb_chainlock_nonblock(db, key) == 0);
	CHECK(rctdb_chainunlock(db, key) == 0);

	/* The error text stays put until the next call. */
	const char *first = rctdb_errorstr(db);
	CHECK(first == rctdb_errorstr(db));
	CHECK(rctdb_close(db) == 0);

	/* Everything is on disk: reopen read-only. */
	db = rctdb_open(path, 0, 0, O_RDONLY, 0);
	CHECK(db != NULL);
	got = rctdb_fetch(db, key);
	CHECK(data_equals(got, "locked"));
	free(got.dptr);
	CHECK(rctdb_close(db) == 0);

	/* An in-memory database needs no name, as with tdb_open. */
	db = rctdb_open(NULL, 0, TDB_INTERNAL, O_RDWR | O_CREAT, 0600);
	CHECK(db != NULL);
	CHECK(rctdb_store(db, key, string_data("in memory"), TDB_INSERT) == 0);
	got = rctdb_fetch(db, key);
	CHECK(data_equals(got, "in memory"));
	free(got.dptr);
	CHECK(rctdb_close(db) == 0);
	printf("crud: ok\n");
	return 0;
}
