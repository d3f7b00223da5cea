/*
 * Embedding libhotsnap on a loop of your own: snapshot one domain into a
 * dir: image store and print every event as it comes.
 *
 *   cc embed.c $(pkg-config --cflags --libs hotsnap) -o embed
 *   ./embed DOMAIN STATE_DIR STORE_DIR
 *
 * Exit status: 0 when the snapshot succeeded.
 */
#include <stdio.h>
#include <stdlib.h>
#include <hotsnap.h>

struct app {
    struct hs_engine *eng;
    struct hs_job *job;
    const char *domain;
    char target[4096];
    int status;
};

static void on_event(void *data, const cJSON *ev)
{
    char *s = cJSON_PrintUnformatted(ev);

    printf("%s\n", s);
    fflush(stdout);
    free(s);
}

static void closed(struct hs_engine *eng, void *data)
{
}

static void snapshot_done(struct hs_job *job, int status, void *data)
{
    struct app *app = data;
    size_t i;

    app->status = status;
    if (status == 0) {
        for (i = 0; i < hs_job_image_count(job); i++)
            printf("image %s at %s\n", hs_job_image(job, i)->id, hs_job_image(job, i)->location);
    } else {
        fprintf(stderr, "embed: %s\n", hs_job_error(job));
    }
    hs_job_free(job);
    hs_engine_close(app->eng, closed, app);
}

/* Recovery first: it undoes what a killed run of any front end left. */
static void recovered(struct hs_engine *eng, int status, const cJSON *report, void *data)
{
    struct app *app = data;
    struct hs_snapshot_opts opts = {0};
    char err[512];

    if (status < 0) {
        fprintf(stderr, "embed: %s\n", hs_engine_error(eng) ? hs_engine_error(eng) : "recovery failed");
        app->status = status;
        hs_engine_close(eng, closed, app);
        return;
    }
    opts.domain = app->domain;
    opts.target = app->target;
    if (hs_snapshot_start(eng, &opts, snapshot_done, app, &app->job, err, sizeof(err)) < 0) {
        fprintf(stderr, "embed: %s\n", err);
        app->status = -1;
        hs_engine_close(eng, closed, app);
    }
}

int main(int argc, char **argv)
{
    struct hs_engine_opts eopts = {0};
    struct app app = {0};
    uv_loop_t loop;
    char err[512];

    if (argc != 4) {
        fprintf(stderr, "usage: %s DOMAIN STATE_DIR STORE_DIR\n", argv[0]);
        return 2;
    }
    app.domain = argv[1];
    snprintf(app.target, sizeof(app.target), "dir:%s", argv[3]);
    eopts.state_dir = argv[2];
    eopts.on_event = on_event;
    uv_loop_init(&loop);
    if (hs_engine_open(&loop, &eopts, &app.eng, err, sizeof(err)) < 0) {
        fprintf(stderr, "embed: %s\n", err);
        return 2;
    }
    if (hs_engine_recover(app.eng, recovered, &app) < 0)
        return 2;
    uv_run(&loop, UV_RUN_DEFAULT);
    uv_loop_close(&loop);
    return app.status == 0 ? 0 : 1;
}
