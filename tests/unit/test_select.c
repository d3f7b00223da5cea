/* Mode selection, and the QEMU user it depends on. */
#include <errno.h>
#include <string.h>

#include "backend.h"
#include "check.h"
#include "domain.h"

static const struct hs_backend_ops *pick(enum hs_mode mode, int state, int has_backup,
                                         int qemu_user, char *why, struct hs_err *err)
{
    struct hs_select_in in = {0};

    in.mode = mode;
    in.domain = "web-1";
    in.state = state;
    in.has_backup = has_backup;
    in.qemu_user = qemu_user;
    hs_err_clear(err);
    return hs__backend_select(&in, why, 256, err);
}

static void test_running_guests_stream_by_default(void)
{
    char why[256];
    struct hs_err err = {0};

    CHECK(pick(HS_MODE_AUTO, VIR_DOMAIN_RUNNING, 1, 1, why, &err) == &hs_backend_stream);
    CHECK(strstr(why, "pull mode") && strstr(why, "no image in scratch"));
    CHECK(pick(HS_MODE_AUTO, VIR_DOMAIN_PAUSED, 1, 1, why, &err) == &hs_backend_stream);
    /* QEMU's user unknown: no socket directory for it, so push */
    CHECK(pick(HS_MODE_AUTO, VIR_DOMAIN_RUNNING, 1, 0, why, &err) == &hs_backend_live);
    CHECK(strstr(why, "push mode") && strstr(why, "unknown"));
    CHECK(pick(HS_MODE_AUTO, VIR_DOMAIN_RUNNING, 0, 1, why, &err) == &hs_backend_mirror);
    CHECK(pick(HS_MODE_AUTO, VIR_DOMAIN_SHUTOFF, 1, 1, why, &err) == &hs_backend_offline);
    /* push stays available by name */
    CHECK(pick(HS_MODE_LIVE, VIR_DOMAIN_RUNNING, 1, 1, why, &err) == &hs_backend_live);
}

static void test_stream_by_name(void)
{
    char why[256];
    struct hs_err err = {0};

    CHECK(pick(HS_MODE_STREAM, VIR_DOMAIN_RUNNING, 1, 1, why, &err) == &hs_backend_stream);
    CHECK(pick(HS_MODE_STREAM, VIR_DOMAIN_RUNNING, 0, 1, why, &err) == NULL);
    CHECK(err.code == -ENOTSUP && strstr(err.msg, "--mode mirror"));
    CHECK(pick(HS_MODE_STREAM, VIR_DOMAIN_RUNNING, 1, 0, why, &err) == NULL);
    CHECK(strstr(err.msg, "--mode live"));
    CHECK(pick(HS_MODE_STREAM, VIR_DOMAIN_SHUTOFF, 1, 1, why, &err) == NULL);
    CHECK(strstr(err.msg, "needs a running or paused domain"));
    CHECK(!strcmp(hs_mode_name(HS_MODE_STREAM), "stream"));
}

static void test_dac_label(void)
{
    struct hs_domain_info info;
    struct hs_err err = {0};
    const char *xml = "<domain type='qemu'><name>web-1</name>"
                      "<uuid>3f2b0000-0000-4000-8000-000000000001</uuid>"
                      "<seclabel type='dynamic' model='dac' relabel='yes'>"
                      "<label>+64055:+993</label><imagelabel>+64055:+993</imagelabel></seclabel>"
                      "<devices/></domain>";

    memset(&info, 0, sizeof(info));
    CHECK(hs__domain_parse(xml, &info, &err) == 0);
    CHECK(info.qemu_uid == 64055 && info.qemu_gid == 993);
    CHECK(hs__domain_qemu_user_known(&info));
    hs__domain_info_clear(&info);
    memset(&info, 0, sizeof(info));
    CHECK(hs__domain_parse("<domain><name>x</name><uuid>3f2b0000-0000-4000-8000-000000000002"
                           "</uuid><devices/></domain>",
                           &info, &err) == 0);
    CHECK(info.qemu_uid == -1 && info.qemu_gid == -1); /* shut off: no label */
    hs__domain_info_clear(&info);
}

int main(void)
{
    RUN(test_running_guests_stream_by_default);
    RUN(test_stream_by_name);
    RUN(test_dac_label);
    return 0;
}
