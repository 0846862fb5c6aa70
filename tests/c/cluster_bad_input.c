/* Bad input to clustered opens and calls: a daemon that is not there, names that are not
 * plain file names, bad flags and timeouts; each fails with a precise errno and text, never
 * with a private local copy. With a live cluster: a migration that cannot finish in time.
 * Usage: cluster_bad_input DIR SOCKET0 SOCKET1
 */
#include "check.h"

#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static struct rctdb_context *open_with(const char *socket, const char *name, int tdb_flags, int open_flags)
{
	CHECK(setenv("RCTDB_SOCKET", socket, 1) == 0);
	return rctdb_open(name, 0, tdb_flags, open_flags, 0600);
}

/* A unix socket file nobody listens on: bound, then closed. */
static void make_dead_socket(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	CHECK(strlen(path) < sizeof(addr.sun_path));
	strcpy(addr.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(fd >= 0);
	CHECK(bind(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0);
	CHECK(close(fd) == 0);
}

static void no_daemon(const char *dir)
{
	char missing[4096], dead[4096];
	struct rctdb_context *db;

	join(missing, sizeof(missing), dir, "no-such.sock");
	db = open_with(missing, "db.tdb", 0, O_RDWR | O_CREAT);
	CHECK_OPEN_FAILED(db, ENOENT, "cannot reach rctdbd");
	CHECK(strstr(rctdb_open_error(), missing) != NULL);
	CHECK(access("db.tdb", F_OK) == -1); /* no local file either */

	join(dead, sizeof(dead), dir, "dead.sock");
	make_dead_socket(dead);
	db = open_with(dead, "db.tdb", 0, O_RDWR | O_CREAT);
	CHECK_OPEN_FAILED(db, ECONNREFUSED, "cannot reach rctdbd");
	CHECK(strstr(rctdb_open_error(), "is the daemon running?") != NULL);

	db = open_with("", "db.tdb", 0, O_RDWR | O_CREAT);
	CHECK_OPEN_FAILED(db, EINVAL, "RCTDB_SOCKET is set but empty");

	/* A private in-memory database stays local, whatever RCTDB_SOCKET says. */
	db = open_with(missing, NULL, TDB_INTERNAL, O_RDWR | O_CREAT);
	CHECK(db != NULL && strcmp(rctdb_open_error(), "") == 0);
	CHECK(rctdb_store(db, string_data("k"), string_data("v"), TDB_INSERT) == 0);
	TDB_DATA got = rctdb_fetch(db, string_data("k"));
	CHECK(data_equals(got, "v"));
	free(got.dptr);
	CHECK(rctdb_close(db) == 0);
}

/* Checked before the daemon is asked: these fail the same with or without one. */
static void bad_open_arguments(const char *socket)
{
	struct rctdb_context *db;
	db = open_with(socket, "dir/..", 0, O_RDWR | O_CREAT);
	CHECK_OPEN_FAILED(db, EINVAL, "\"..\" is not a plain file name");
	db = open_with(socket, "dir/", 0, O_RDWR | O_CREAT);
	CHECK_OPEN_FAILED(db, EINVAL, "\"\" is not a plain file name");
	db = open_with(socket, "/", 0, O_RDWR | O_CREAT);
	CHECK_OPEN_FAILED(db, EINVAL, "not a plain file name");
	db = open_with(socket, ".", 0, O_RDWR | O_CREAT);
	CHECK_OPEN_FAILED(db, EINVAL, "not a plain file name");
	db = open_with(socket, "", 0, O_RDWR | O_CREAT);
	CHECK_OPEN_FAILED(db, EINVAL, "not a plain file name");
	db = open_with(socket, NULL, 0, O_RDWR | O_CREAT);
	CHECK_OPEN_FAILED(db, EINVAL, "name is NULL");

	db = open_with(socket, "db.tdb", 1 << 20, O_RDWR | O_CREAT);
	CHECK_OPEN_FAILED(db, EINVAL, "unknown bits 0x100000");
	db = open_with(socket, "db.tdb", 0, O_WRONLY | O_CREAT);
	CHECK_OPEN_FAILED(db, EINVAL, "O_WRONLY");
	db = open_with(socket, "db.tdb", 0, O_RDWR | O_CREAT | O_TRUNC);
	CHECK_OPEN_FAILED(db, EINVAL, "O_TRUNC");
	db = open_with(socket, "db.tdb", 0, O_RDWR | O_CREAT | O_EXCL);
	CHECK_OPEN_FAILED(db, EINVAL, "O_EXCL");
	CHECK(setenv("RCTDB_SOCKET", socket, 1) == 0);
	db = rctdb_open("db.tdb", -1, 0, O_RDWR | O_CREAT, 0600);
	CHECK_OPEN_FAILED(db, EINVAL, "hash_size -1");

	const char *bad_timeouts[] = { "abc", "0", "-5", "", "12ms" };
	for (size_t i = 0; i < sizeof(bad_timeouts) / sizeof(bad_timeouts[0]); i++) {
		CHECK(setenv("RCTDB_MIGRATE_TIMEOUT_MS", bad_timeouts[i], 1) == 0);
		db = open_with(socket, "db.tdb", 0, O_RDWR | O_CREAT);
		CHECK_OPEN_FAILED(db, EINVAL, "RCTDB_MIGRATE_TIMEOUT_MS");
		CHECK(strstr(rctdb_open_error(), "positive whole number of milliseconds") != NULL);
	}
	CHECK(unsetenv("RCTDB_MIGRATE_TIMEOUT_MS") == 0);
}

/* Node 0 holds the record under its chain lock (this process holds it) while node 1 asks
 * for it: node 1's call gives up after RCTDB_MIGRATE_TIMEOUT_MS with a clear error. Once
 * the lock is free the record migrates as usual. */
static void migration_timeout(const char *socket0, const char *socket1)
{
	TDB_DATA key = string_data("held");
	struct rctdb_context *n0 = open_with(socket0, "timeout.tdb", 0, O_RDWR | O_CREAT);
	CHECK(n0 != NULL);
	CHECK(setenv("RCTDB_MIGRATE_TIMEOUT_MS", "300", 1) == 0);
	struct rctdb_context *n1 = open_with(socket1, "timeout.tdb", 0, O_RDWR | O_CREAT);
	CHECK(n1 != NULL);
	CHECK(unsetenv("RCTDB_MIGRATE_TIMEOUT_MS") == 0);

	CHECK(rctdb_chainlock(n0, key) == 0);
	CHECK(rctdb_store(n0, key, string_data("on node 0"), TDB_INSERT) == 0);
	TDB_DATA got = rctdb_fetch(n1, key);
	CHECK(got.dptr == NULL);
	CHECK_ERR(n1, TDB_ERR_LOCK_TIMEOUT, "rctdb_fetch: timeout.tdb: the record did not migrate to node 1");
	CHECK(rctdb_store(n1, key, string_data("x"), TDB_REPLACE) == -1);
	CHECK_ERR(n1, TDB_ERR_LOCK_TIMEOUT, "within 300ms");
	CHECK(rctdb_chainlock(n1, key) == -1);
	CHECK_ERR(n1, TDB_ERR_LOCK_TIMEOUT, "within 300ms");
	CHECK(rctdb_chainunlock(n0, key) == 0);

	/* Free again: it moves, with the data node 0 stored under its lock (the default
	 * timeout now, so that a slow machine cannot fail this). */
	CHECK(rctdb_close(n1) == 0);
	n1 = open_with(socket1, "timeout.tdb", 0, O_RDWR | O_CREAT);
	CHECK(n1 != NULL);
	got = rctdb_fetch(n1, key);
	CHECK(data_equals(got, "on node 0"));
	free(got.dptr);
	CHECK(rctdb_close(n1) == 0);
	CHECK(rctdb_close(n0) == 0);
}

int main(int argc, char **argv)
{
	CHECK(argc == 4);
	CHECK(chdir(argv[1]) == 0);
	no_daemon(argv[1]);
	bad_open_arguments("/no/daemon/needed.sock");
	bad_open_arguments(argv[2]);
	migration_timeout(argv[2], argv[3]);
	CHECK(unsetenv("RCTDB_SOCKET") == 0);
	printf("cluster_bad_input: ok\n");
	return 0;
}
