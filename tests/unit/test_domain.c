/* Disk discovery and the devices a save must detach, on recorded domain XML. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "domain.h"

/* A Nova guest (trimmed from `virsh dumpxml` of a libvirt 9.0 host) with a
 * PCI passthrough device, an SR-IOV port, a config drive and an RBD volume. */
static const char nova_xml[] =
    "<domain type='kvm' id='7'>\n"
    "  <name>instance-0000002a</name>\n"
    "  <uuid>5b2d1e3c-7a51-4c5e-9a3b-1f0e2d3c4b5a</uuid>\n"
    "  <metadata>\n"
    "    <nova:instance xmlns:nova='http://openstack.org/xmlns/libvirt/nova/1.1'>\n"
    "      <nova:name>web-1</nova:name>\n"
    "      <nova:owner>\n"
    "        <nova:user uuid='u-1111'>admin</nova:user>\n"
    "        <nova:project uuid='p-2222'>demo</nova:project>\n"
    "      </nova:owner>\n"
    "      <nova:root type='image' uuid='img-3333'/>\n"
    "    </nova:instance>\n"
    "  </metadata>\n"
    "  <memory unit='KiB'>2097152</memory>\n"
    "  <devices>\n"
    "    <disk type='file' device='disk'>\n"
    "      <driver name='qemu' type='qcow2' cache='none'/>\n"
    "      <source file='/var/lib/nova/instances/5b2d/disk'/>\n"
    "      <backingStore type='file'><format type='raw'/>"
    "<source file='/var/lib/nova/instances/_base/abc'/></backingStore>\n"
    "      <target dev='vda' bus='virtio'/>\n"
    "    </disk>\n"
    "    <disk type='file' device='cdrom'>\n"
    "      <driver name='qemu' type='raw'/>\n"
    "      <source file='/var/lib/nova/instances/5b2d/disk.config'/>\n"
    "      <target dev='sda' bus='sata'/><readonly/>\n"
    "    </disk>\n"
    "    <disk type='network' device='disk'>\n"
    "      <driver name='qemu' type='raw'/>\n"
    "      <source protocol='rbd' name='volumes/volume-9'/>\n"
    "      <target dev='vdb' bus='virtio'/>\n"
    "    </disk>\n"
    "    <disk type='block' device='disk'>\n"
    "      <driver name='qemu' type='raw'/>\n"
    "      <source dev='/dev/vg0/lv1'/>\n"
    "      <target dev='vdc' bus='virtio'/>\n"
    "    </disk>\n"
    "    <interface type='bridge'><mac address='fa:16:3e:00:00:01'/>"
    "<source bridge='br-int'/></interface>\n"
    "    <interface type='hostdev' managed='yes'>\n"
    "      <mac address='fa:16:3e:00:00:02'/>\n"
    "      <source><address type='pci' domain='0x0000' bus='0x81' slot='0x10' "
    "function='0x2'/></source>\n"
    "    </interface>\n"
    "    <hostdev mode='subsystem' type='pci' managed='yes'>\n"
    "      <source><address domain='0x0000' bus='0x3b' slot='0x00' function='0x0'/></source>\n"
    "    </hostdev>\n"
    "    <hostdev mode='subsystem' type='usb' managed='yes'>\n"
    "      <source><vendor id='0x1234'/><product id='0xbeef'/></source>\n"
    "    </hostdev>\n"
    "  </devices>\n"
    "</domain>\n";

static void test_nova_guest(void)
{
    struct hs_domain_info info;
    struct hs_err err = {0};
    int idx[8];

    CHECK(hs__domain_parse(nova_xml, &info, &err) == 0);
    CHECK(!strcmp(info.name, "instance-0000002a"));
    CHECK(!strcmp(info.uuid, "5b2d1e3c-7a51-4c5e-9a3b-1f0e2d3c4b5a"));
    CHECK(info.memory_kib == 2097152);
    CHECK(!strcmp(info.base_image_ref, "img-3333"));
    CHECK(!strcmp(info.user_id, "u-1111") && !strcmp(info.owner_id, "p-2222"));
    CHECK(info.ndisks == 3); /* the config drive cdrom is not a disk to capture */
    CHECK(!strcmp(info.disks[0].target, "vda") && !info.disks[0].unsupported);
    CHECK(!strcmp(info.disks[0].format, "qcow2"));
    CHECK(!strcmp(info.disks[0].source, "/var/lib/nova/instances/5b2d/disk"));
    CHECK(
        strstr(info.disks[1].unsupported, "disk 'vdb' is a network disk (rbd 'volumes/volume-9')"));
    CHECK(strstr(info.disks[2].unsupported, "disk 'vdc' is a block device disk ('/dev/vg0/lv1')"));

    /* the root disk alone is fine; all disks name the first one it cannot take */
    CHECK(hs__domain_select(&info, 0, idx, &err) == 1 && idx[0] == 0);
    CHECK(hs__domain_select(&info, 1, idx, &err) == -ENOTSUP);
    CHECK(strstr(err.msg, "domain 'instance-0000002a': disk 'vdb' is a network disk"));

    /* a save cannot keep the PCI device nor the SR-IOV port; USB and bridges stay */
    CHECK(info.nhostdevs == 2);
    CHECK(strstr(info.hostdevs[0], "<interface type=\"hostdev\"") ||
          strstr(info.hostdevs[1], "<interface type=\"hostdev\""));
    CHECK(strstr(info.hostdevs[0], "bus=\"0x3b\"") || strstr(info.hostdevs[1], "bus=\"0x3b\""));
    CHECK(!strstr(info.hostdevs[0], "usb") && !strstr(info.hostdevs[1], "usb"));
    /* each is a whole device element that libvirt can detach and attach again */
    CHECK(hs__domain_parse(info.hostdevs[0], &(struct hs_domain_info){0}, &err) == -EINVAL);
    hs__domain_info_clear(&info);
}

static void test_boot_order_root(void)
{
    static const char xml[] =
        "<domain><name>d</name><uuid>u</uuid><devices>"
        "<disk type='file' device='disk'><driver type='raw'/><source file='/a'/>"
        "<target dev='vda'/><boot order='2'/></disk>"
        "<disk type='file' device='disk'><driver type='qcow2'/><source file='/b'/>"
        "<target dev='vdb'/><boot order='1'/></disk>"
        "<disk type='file' device='disk'><driver type='vmdk'/><source file='/c'/>"
        "<target dev='vdc'/></disk>"
        "</devices></domain>";
    struct hs_domain_info info;
    struct hs_err err = {0};
    int idx[4];

    CHECK(hs__domain_parse(xml, &info, &err) == 0);
    CHECK(hs__domain_root_disk(&info) == 1);
    CHECK(hs__domain_select(&info, 0, idx, &err) == 1 && idx[0] == 1);
    CHECK(hs__domain_select(&info, 1, idx, &err) == -ENOTSUP);
    CHECK(strstr(err.msg, "disk 'vdc' has format 'vmdk'"));
    CHECK(info.nhostdevs == 0 && !info.base_image_ref);
    hs__domain_info_clear(&info);
}

static void test_no_disk_and_bad_xml(void)
{
    struct hs_domain_info info;
    struct hs_err err = {0};
    int idx[1];

    CHECK(hs__domain_parse("<domain><name>empty</name><devices/></domain>", &info, &err) == 0);
    CHECK(hs__domain_select(&info, 0, idx, &err) == -ENOENT);
    CHECK(strstr(err.msg, "domain 'empty' has no disk to snapshot"));
    hs__domain_info_clear(&info);
    hs_err_clear(&err);
    CHECK(hs__domain_parse("<domain><name>x", &info, &err) == -EINVAL);
    CHECK(hs__domain_parse("<pool/>", &info, &err) == -EINVAL);
}

static void test_xml_escape(void)
{
    char *e = hs__xml_escape("/srv/it's & <odd> \"x\"");

    CHECK(!strcmp(e, "/srv/it&apos;s &amp; &lt;odd&gt; &quot;x&quot;"));
    free(e);
    e = hs__xml_escape("");
    CHECK(!strcmp(e, ""));
    free(e);
}

int main(void)
{
    RUN(test_xml_escape);
    RUN(test_nova_guest);
    RUN(test_boot_order_root);
    RUN(test_no_disk_and_bad_xml);
    return 0;
}
