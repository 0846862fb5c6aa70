/* Every bad input gives -1 / NULL and a precise error, never a crash. Usage: bad_input DIR */
#include "check.h"

#include <sys/stat.h>
#include <unistd.h>

static int never_called(TDB_DATA key, TDB_DATA data, void *private_data)
{
	(void)key;
	(void)data;
	(void)private_data;
	exit(2);
}

static void null_context(void)
{
	TDB_DATA key = string_data("k");
	errno = 0;
	CHECK(rctdb_store(NULL, key, key, TDB_REPLACE) == -1);
	CHECK(errno == EINVAL);
	CHECK(rctdb_fetch(NULL, key).dptr == NULL);
	CHECK(rctdb_parse_record(NULL, key, never_called, NULL) == -1);
	CHECK(rctdb_storev(NULL, key, &key, 1, TDB_REPLACE) == -1);
	CHECK(rctdb_delete(NULL, key) == -1);
	CHECK(rctdb_exists(NULL, key) == -1);
	CHECK(rctdb_chainlock(NULL, key) == -1);
	CHECK(rctdb_chainlock_nonblock(NULL, key) == -1);
	CHECK(rctdb_chainunlock(NULL, key) == -1);
	CHECK(rctdb_traverse(NULL, NULL, NULL) == -1);
	CHECK(rctdb_get_seqnum(NULL) == -1);
	CHECK(rctdb_close(NULL) == -1);
	CHECK(rctdb_error(NULL) == TDB_ERR_EINVAL);
	CHECK(strstr(rctdb_errorstr(NULL), "NULL") != NULL);
}

static void bad_arguments(struct rctdb_context *db)
{
	TDB_DATA key = string_data("k");
	TDB_DATA null_key = { NULL, 0 };
	TDB_DATA dangling = { NULL, 5 };

	CHECK(rctdb_store(db, null_key, key, TDB_REPLACE) == -1);
	CHECK_ERR(db, TDB_ERR_EINVAL, "rctdb_store: key.dptr is NULL");
	CHECK(rctdb_fetch(db, null_key).dptr == NULL);
	CHECK_ERR(db, TDB_ERR_EINVAL, "rctdb_fetch: key.dptr is NULL");
	CHECK(rctdb_delete(db, null_key) == -1);
	CHECK_ERR(db, TDB_ERR_EINVAL, "rctdb_delete: key.dptr is NULL");
	CHECK(rctdb_exists(db, null_key) == -1);
	CHECK_ERR(db, TDB_ERR_EINVAL, "rctdb_exists: key.dptr is NULL");
	CHECK(rctdb_chainlock(db, null_key) == -1);
	CHECK_ERR(db, TDB_ERR_EINVAL, "rctdb_chainlock: key.dptr is NULL");
	CHECK(rctdb_parse_record(db, null_key, never_called, NULL) == -1);
	CHECK_ERR(db, TDB_ERR_EINVAL, "rctdb_parse_record: key.dptr is NULL");

	CHECK(rctdb_parse_record(db, key, NULL, NULL) == -1);
	CHECK_ERR(db, TDB_ERR_EINVAL, "rctdb_parse_record: parser is NULL");

	CHECK(rctdb_store(db, key, dangling, TDB_REPLACE) == -1);
	CHECK_ERR(db, TDB_ERR_EINVAL, "rctdb_store: dbuf.dptr is NULL but dbuf.dsize is 5");
	TDB_DATA parts[2] = { key, dangling };
	CHECK(rctdb_storev(db, key, parts, 2, TDB_REPLACE) == -1);
	CHECK_ERR(db, TDB_ERR_EINVAL, "rctdb_storev: dbufs[1].dptr is NULL but dbufs[1].dsize is 5");
	CHECK(rctdb_storev(db, key, NULL, 2, TDB_REPLACE) == -1);
	CHECK_ERR(db, TDB_ERR_EINVAL, "dbufs is NULL but num_dbufs is 2");
	CHECK(rctdb_storev(db, key, parts, -1, TDB_REPLACE) == -1);
	CHECK_ERR(db, TDB_ERR_EINVAL, "num_dbufs is -1");

	CHECK(rctdb_store(db, key, key, 7) == -1);
	CHECK(rctdb_error(db) == TDB_ERR_EINVAL);
	CHECK(strcmp(rctdb_errorstr(db),
		     "rctdb_store: unknown store flag 7 (expected TDB_REPLACE, TDB_INSERT or TDB_MODIFY)") == 0);
	CHECK(rctdb_exists(db, key) == 0); /* nothing was stored by any of the above */
}

static void write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	CHECK(f != NULL);
	CHECK(fputs(text, f) >= 0);
	CHECK(fclose(f) == 0);
}

static void bad_files(const char *dir)
{
	char path[4096], missing_dir[2048];
	struct rctdb_context *db;

	snprintf(missing_dir, sizeof(missing_dir), "%s/no-such-dir", dir);
	snprintf(path, sizeof(path), "%s/x.tdb", missing_dir);
	db = rctdb_open(path, 0, 0, O_RDWR | O_CREAT, 0600);
	CHECK_OPEN_FAILED(db, ENOENT, "does not exist");
	CHECK(strstr(rctdb_open_error(), missing_dir) != NULL);

	join(path, sizeof(path), dir, "absent.tdb");
	db = rctdb_open(path, 0, 0, O_RDWR, 0600);
	CHECK_OPEN_FAILED(db, ENOENT, "no O_CREAT");

	/* Not a tdb: refused, and O_CREAT must not overwrite it. */
	join(path, sizeof(path), dir, "text.tdb");
	write_file(path, "this is a text file, not a tdb\n");
	db = rctdb_open(path, 0, 0, O_RDWR, 0600);
	CHECK_OPEN_FAILED(db, EIO, "not a tdb file");
	db = rctdb_open(path, 0, 0, O_RDWR | O_CREAT, 0600);
	CHECK_OPEN_FAILED(db, EIO, "not a tdb file");
	char buf[64] = { 0 };
	FILE *f = fopen(path, "r");
	CHECK(f != NULL && fgets(buf, sizeof(buf), f) != NULL);
	fclose(f);
	CHECK(strcmp(buf, "this is a text file, not a tdb\n") == 0);

	/* An empty file is not a tdb either, unless O_CREAT makes it one. */
	join(path, sizeof(path), dir, "empty.tdb");
	write_file(path, "");
	db = rctdb_open(path, 0, 0, O_RDWR, 0600);
	CHECK_OPEN_FAILED(db, EIO, "empty");

	/* Truncated: cut a real tdb in half, then to less than its header. */
	join(path, sizeof(path), dir, "cut.tdb");
	db = rctdb_open(path, 7, 0, O_RDWR | O_CREAT, 0600);
	CHECK(db != NULL);
	for (int i = 0; i < 300; i++) {
		TDB_DATA key = { (unsigned char *)&i, sizeof(i) };
		CHECK(rctdb_store(db, key, string_data("some value of a fair length"), TDB_INSERT) == 0);
	}
	CHECK(rctdb_close(db) == 0);
	struct stat st;
	CHECK(stat(path, &st) == 0);
	CHECK(truncate(path, st.st_size / 2) == 0);
	db = rctdb_open(path, 0, 0, O_RDWR, 0600);
	CHECK_OPEN_FAILED(db, EIO, "truncated");
	CHECK(truncate(path, 100) == 0);
	db = rctdb_open(path, 0, 0, O_RDWR, 0600);
	CHECK_OPEN_FAILED(db, EIO, "shorter than the 168-byte tdb header");

	/* Writes to a read-only open. */
	join(path, sizeof(path), dir, "ro.tdb");
	db = rctdb_open(path, 0, 0, O_RDWR | O_CREAT, 0600);
	CHECK(db != NULL && rctdb_store(db, string_data("k"), string_data("v"), TDB_INSERT) == 0);
	CHECK(rctdb_close(db) == 0);
	db = rctdb_open(path, 0, 0, O_RDONLY, 0);
	CHECK(db != NULL);
	CHECK(rctdb_store(db, string_data("k"), string_data("w"), TDB_REPLACE) == -1);
	CHECK_ERR(db, TDB_ERR_RDONLY, "read-only");
	CHECK(rctdb_delete(db, string_data("k")) == -1);
	CHECK_ERR(db, TDB_ERR_RDONLY, "read-only");
	TDB_DATA got = rctdb_fetch(db, string_data("k"));
	CHECK(data_equals(got, "v"));
	free(got.dptr);
	CHECK(rctdb_close(db) == 0);

	/* Bad open arguments. */
	join(path, sizeof(path), dir, "flags.tdb");
	db = rctdb_open(path, 0, 1 << 20, O_RDWR | O_CREAT, 0600);
	CHECK_OPEN_FAILED(db, EINVAL, "unknown bits 0x100000");
	db = rctdb_open(path, 0, 0, O_WRONLY | O_CREAT, 0600);
	CHECK_OPEN_FAILED(db, EINVAL, "O_WRONLY");
	db = rctdb_open(NULL, 0, 0, O_RDWR | O_CREAT, 0600);
	CHECK_OPEN_FAILED(db, EINVAL, "name is NULL");

	/* A cluster is configured but its daemon is not there: never a silent private local copy. */
	CHECK(setenv("RCTDB_SOCKET", "/run/rctdb/no-such-rctdbd.socket", 1) == 0);
	db = rctdb_open(path, 0, 0, O_RDWR | O_CREAT, 0600);
	CHECK_OPEN_FAILED(db, ENOENT, "cannot reach rctdbd at /run/rctdb/no-such-rctdbd.socket");
	CHECK(access(path, F_OK) == -1);
	CHECK(unsetenv("RCTDB_SOCKET") == 0);

	/* A success clears the open error. */
	db = rctdb_open(path, 0, 0, O_RDWR | O_CREAT, 0600);
	CHECK(db != NULL && strcmp(rctdb_open_error(), "") == 0);
	bad_arguments(db);
	CHECK(rctdb_close(db) == 0);
}

int main(int argc, char **argv)
{
	CHECK(argc == 2);
	null_context();
	bad_files(argv[1]);
	printf("bad_input: ok\n");
	return 0;
}
